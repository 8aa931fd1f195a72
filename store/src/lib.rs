//! `metakv-store`: the record store of one metakv node.
//!
//! One redb file (`state.redb`) holds buckets of records. Every change is an [`Op`] applied at
//! a [`Stamp`] (revision and time) chosen by the caller; the Raft layer passes the log index
//! and the leader's clock, which makes the store a pure function of the log. The store itself
//! is synchronous and knows nothing of Raft: run it on a blocking thread.
//!
//! - Records are sealed (format version, postcard, crc32) and checked on every read:
//!   [`record`], [`codec`].
//! - Deletes leave tombstones, indexed so that collecting them costs O(tombstones):
//!   [`ReadView::tombstones`]; [`Op::Purge`] removes them under a guard.
//! - A changes feed per bucket: [`ReadView::changes`], `Compacted` below the purge floor.
//! - One archive format for snapshots, backups and hibernation: [`archive`].
//! - Compaction, sizes and the integrity check: [`Store::compact`], [`Store::sizes`],
//!   [`Store::check`].
//!
//! ```
//! use metakv_store::{Config, Op, Stamp, Expect, Applied, Store};
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(Config::new(dir.path().join("state.redb"))).unwrap();
//! let stamp = |rev| Stamp { rev, time_ms: 0 };
//! store.apply(&Op::CreateBucket { bucket: "users".into() }, stamp(1)).unwrap();
//! let put = Op::Put { bucket: "users".into(), key: b"ada".to_vec(), value: b"admin".to_vec(), expect: Expect::Absent };
//! assert_eq!(store.apply(&put, stamp(2)).unwrap(), Applied::Written { rev: 2 });
//! assert_eq!(store.get("users", b"ada").unwrap().unwrap().value, b"admin");
//! ```

#![forbid(unsafe_code)]

pub mod archive;
pub mod bucket;
pub mod codec;
mod error;
mod keys;
mod maintenance;
mod op;
pub mod private;
pub mod record;
mod store;
mod tables;
mod write;

pub use archive::{
    ArchiveReader, ArchiveSummary, ArchiveWriter, ChunkSummary, Frame, ImportSummary, Scope,
};
pub use bucket::{
    BucketInfo, BucketState, HIBERNATION_KEY_PREFIX, SYS_BUCKET, hibernation_key,
    validate_bucket_name,
};
pub use error::{Error, KeyDisplay, Result};
pub use maintenance::{CheckReport, CompactReport, FileCheck, Problem, Sizes};
pub use op::{Applied, Expect, Op, Stamp, TombstoneRef};
pub use record::Record;
pub use store::{
    BATCH_ITEMS_MAX, CACHE_BYTES_DEFAULT, Change, Changes, Config, KEY_BYTES_MAX, PAGE_ITEMS_MAX,
    PAGE_ROWS_SCANNED_MAX, ReadView, Scan, ScanPage, Store, TombstonePage, TombstoneQuery,
    VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT,
};
pub use tables::STORE_FORMAT;
pub use write::{META_RESERVED_PREFIX, Writer};
