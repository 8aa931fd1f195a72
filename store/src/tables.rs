//! The tables of `state.redb`. Keys are laid out in `keys.rs`.
//!
//! | table        | key                      | value                              |
//! |--------------|--------------------------|------------------------------------|
//! | `records`    | bucket 00 key            | sealed [`Record`](crate::Record)   |
//! | `tombstones` | bucket 00 key            | (rev, mtime_ms) of the tombstone   |
//! | `changes`    | bucket 00 rev (BE)       | user key changed at that rev       |
//! | `buckets`    | bucket name              | sealed [`BucketInfo`](crate::BucketInfo) |
//! | `meta`       | name                     | bytes (format version, and the Raft layer's own) |
//!
//! Invariants kept by every write (checked by [`Store::check`](crate::Store::check)):
//! - a row in `tombstones` exists iff the record at that key is a tombstone, with the same rev;
//! - `changes` holds exactly one row per record, at the record's rev;
//! - a bucket's `records` / `tombstones` counters equal its live records / tombstones.

use redb::TableDefinition;

pub(crate) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
pub(crate) const TOMBSTONES: TableDefinition<&[u8], (u64, u64)> =
    TableDefinition::new("tombstones");
pub(crate) const CHANGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changes");
pub(crate) const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Meta key of the store's format version (u32 LE).
pub(crate) const META_FORMAT: &str = "format_version";

/// Format of a sealed [`BucketInfo`](crate::BucketInfo).
pub(crate) const BUCKET_FORMAT: u8 = 1;

/// Format version of the store file as a whole: the tables and key layouts above. Bump it on any
/// change to them.
pub const STORE_FORMAT: u32 = 1;
