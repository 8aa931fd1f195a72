//! Operations: every change to the store is one [`Op`] applied with a [`Stamp`].
//!
//! The Raft layer puts an `Op` in each log entry and applies it with the entry's index as the
//! revision and the leader's clock as the time, so the store's state is a pure function of the
//! log: applying an op reads neither the local clock nor randomness, and iterates only ordered
//! maps.

use serde::{Deserialize, Serialize};

use crate::bucket::BucketState;
use crate::record::Record;

/// The revision and time an op is applied at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The Raft log index of the entry; it must be above the revision of every record it changes.
    pub rev: u64,
    /// The leader's clock when it proposed the entry, in ms since the Unix epoch.
    pub time_ms: u64,
}

/// What a write expects of the key's current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Expect {
    /// No condition.
    #[default]
    Any,
    /// No live record: the key was never written, or its record is a tombstone.
    Absent,
    /// The current record (live or a tombstone) has exactly this revision.
    Rev(u64),
}

/// A tombstone named by bucket, key and the revision of the delete that made it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TombstoneRef {
    pub bucket: String,
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    pub rev: u64,
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    CreateBucket {
        bucket: String,
    },
    /// Removes the bucket and everything in it.
    DropBucket {
        bucket: String,
    },
    /// Moves a bucket along its life cycle (see [`BucketState`]); other moves are refused.
    SetBucketState {
        bucket: String,
        state: BucketState,
    },
    Put {
        bucket: String,
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        #[serde(with = "crate::codec::bytes")]
        value: Vec<u8>,
        expect: Expect,
    },
    /// Replaces a live record with a tombstone.
    Delete {
        bucket: String,
        #[serde(with = "crate::codec::bytes")]
        key: Vec<u8>,
        expect: Expect,
    },
    /// Guarded select-delete: removes each named tombstone only if the record is still a
    /// tombstone with exactly that revision.
    Purge {
        items: Vec<TombstoneRef>,
    },
    /// Removes every record and tombstone of a `Pausing` or `Resuming` bucket and leaves it
    /// `Paused`, in one entry: the end of a pause, or the rollback of a failed resume.
    DropBucketData {
        bucket: String,
    },
    /// Writes records as they were (revisions included), as read from an archive.
    Restore {
        bucket: String,
        records: Vec<(Vec<u8>, Record)>,
    },
    /// One step of a bucket's hibernation, in one entry: the bucket moves to `state` (a move
    /// [`Op::SetBucketState`] allows, or no move at all), its data goes first when `drop_data`
    /// (from `Pausing` or `Resuming` to `Paused`), and `record` becomes the bucket's
    /// hibernation record in `_sys` (key [`crate::hibernation_key`]). All of it only if that
    /// record is still at `expect`: otherwise nothing changes and the answer is a `Conflict`,
    /// so a step of an operation that has been rolled back or replaced cannot land.
    Hibernate {
        bucket: String,
        state: BucketState,
        drop_data: bool,
        #[serde(with = "crate::codec::bytes")]
        record: Vec<u8>,
        expect: Expect,
    },
}

/// What applying an op did. Failed expectations are answers, not errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A put or delete wrote a record at this revision.
    Written {
        rev: u64,
    },
    /// The expectation did not hold; nothing changed. `current` is the key's current record
    /// revision (live or tombstone), if any.
    Conflict {
        current: Option<u64>,
    },
    /// A delete found no live record; nothing changed.
    NotFound,
    /// A purge: how many tombstones went, and how many the guard kept (recreated, deleted
    /// again at another rev, already gone, or in a bucket that no longer exists).
    Purged {
        purged: u64,
        skipped: u64,
    },
    /// Records and tombstones removed by `DropBucket` or `DropBucketData`.
    Dropped {
        records: u64,
        tombstones: u64,
    },
    Restored {
        records: u64,
    },
    /// A bucket was created or changed state.
    Done,
}

impl Op {
    /// Checks what needs no state: bucket names, key lengths, value lengths against
    /// `value_bytes_max`, batch sizes. A replicated node runs this before it proposes or
    /// forwards an op, with its configured limit, so a refused request writes nothing to any
    /// log; apply then checks only the compiled ceilings, which every node shares (a limit
    /// that differed between nodes at apply would make their states differ).
    pub fn validate(&self, value_bytes_max: usize) -> crate::Result<()> {
        use crate::error::Error;
        let bucket_name = |name: &str| {
            if name == crate::SYS_BUCKET {
                Ok(())
            } else {
                crate::bucket::validate_bucket_name(name)
            }
        };
        let value = |bucket: &str, len: usize| {
            if len > value_bytes_max {
                return Err(Error::ValueTooLarge {
                    bucket: bucket.to_owned(),
                    len,
                    max: value_bytes_max,
                });
            }
            Ok(())
        };
        let batch = |what: &'static str, len: usize| {
            if len > crate::BATCH_ITEMS_MAX {
                return Err(Error::LimitExceeded {
                    what,
                    len,
                    max: crate::BATCH_ITEMS_MAX,
                });
            }
            Ok(())
        };
        match self {
            Op::CreateBucket { bucket }
            | Op::DropBucket { bucket }
            | Op::SetBucketState { bucket, .. }
            | Op::DropBucketData { bucket } => bucket_name(bucket),
            Op::Put {
                bucket,
                key,
                value: v,
                ..
            } => {
                bucket_name(bucket)?;
                crate::store::check_key(bucket, key)?;
                value(bucket, v.len())
            }
            Op::Delete { bucket, key, .. } => {
                bucket_name(bucket)?;
                crate::store::check_key(bucket, key)
            }
            Op::Purge { items } => {
                batch("purge items", items.len())?;
                items.iter().try_for_each(|i| {
                    bucket_name(&i.bucket)?;
                    crate::store::check_key(&i.bucket, &i.key)
                })
            }
            Op::Restore { bucket, records } => {
                bucket_name(bucket)?;
                batch("restore records", records.len())?;
                records.iter().try_for_each(|(key, r)| {
                    crate::store::check_key(bucket, key)?;
                    value(bucket, r.value.len())
                })
            }
            Op::Hibernate { bucket, record, .. } => {
                bucket_name(bucket)?;
                value(crate::SYS_BUCKET, record.len())
            }
        }
    }
}
