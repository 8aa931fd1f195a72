//! Taking care of the file: sizes, compaction, integrity check.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::bucket::BucketInfo;
use crate::error::{Doing, Error, KeyDisplay, Result, io};
use crate::keys;
use crate::record::Record;
use crate::store::{Store, decode_bucket};
use crate::tables::{BUCKETS, CHANGES, RECORDS, TOMBSTONES};

/// How big the file is, and how much of it holds data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The file's length on disk.
    pub file_bytes: u64,
    /// Bytes in allocated pages: what a compaction would at best shrink the file to.
    pub in_use_bytes: u64,
    /// Bytes of keys and values stored, without page overhead.
    pub stored_bytes: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// redb compaction passes run (each moves pages down and trims the file).
    pub passes: u32,
}

/// redb's own verdict on the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// Every page checksum matched.
    Clean,
    /// redb found damage it could repair (an interrupted commit rolled back).
    Repaired,
    /// redb found damage it could not repair.
    Failed(String),
}

/// One thing [`Store::check`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A record that does not decode: bad crc, version, encoding or contents.
    Record {
        bucket: String,
        key: KeyDisplay,
        reason: String,
    },
    /// An index or bucket row that disagrees with the records.
    Index { table: &'static str, reason: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Record {
                bucket,
                key,
                reason,
            } => write!(f, "record {bucket}/{key}: {reason}"),
            Problem::Index { table, reason } => write!(f, "{table}: {reason}"),
        }
    }
}

/// Result of [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub file: FileCheck,
    pub records_checked: u64,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        !matches!(self.file, FileCheck::Failed(_)) && self.problems.is_empty()
    }
}

/// Problems past this many are counted, not listed.
pub const CHECK_PROBLEMS_LISTED_MAX: usize = 1000;

impl Store {
    /// File length and bytes in use. Briefly takes the write lock (redb keeps page statistics
    /// in the writer); no data changes.
    pub fn sizes(&self) -> Result<Sizes> {
        let file_bytes = std::fs::metadata(&self.path)
            .map_err(io("reading the file size"))?
            .len();
        let txn = self
            .db
            .begin_write()
            .doing("beginning a write for statistics")?;
        let stats = txn.stats().doing("reading statistics")?;
        txn.abort().doing("ending a statistics write")?;
        Ok(Sizes {
            file_bytes,
            in_use_bytes: stats.allocated_pages() * stats.page_size() as u64,
            stored_bytes: stats.stored_bytes(),
        })
    }

    /// Compacts the file: redb moves pages toward the start and trims the end, pass after pass,
    /// until nothing moves. Needs `&mut self`: no read or write may be open meanwhile, which is
    /// what taking the store out of service means. Reports file bytes before and after.
    pub fn compact(&mut self) -> Result<CompactReport> {
        let file_len = |path| {
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(io("reading the file size"))
        };
        let bytes_before = file_len(&self.path)?;
        let mut passes = 0;
        // Each pass that moved something may free room for the next; a handful is always
        // enough in practice, and the bound keeps a pathological file from spinning.
        const PASSES_MAX: u32 = 16;
        while passes < PASSES_MAX && self.db.compact().doing("compacting")? {
            passes += 1;
        }
        let bytes_after = file_len(&self.path)?;
        tracing::info!(path = %self.path.display(), bytes_before, bytes_after, passes, "compacted");
        Ok(CompactReport {
            bytes_before,
            bytes_after,
            passes,
        })
    }

    /// Checks the whole store: every record's crc and contents, the tombstone and changes
    /// indexes against the records, the bucket counters, then redb's page checksums. Reports
    /// every problem rather than stopping at the first. Needs `&mut self` for redb's check.
    pub fn check(&mut self) -> Result<CheckReport> {
        let mut report = CheckReport {
            file: FileCheck::Clean,
            records_checked: 0,
            problems: Vec::new(),
        };
        let mut problems_seen = 0u64;
        {
            let mut note = |p: Problem| {
                problems_seen += 1;
                if report.problems.len() < CHECK_PROBLEMS_LISTED_MAX {
                    report.problems.push(p);
                }
            };
            let txn = self.db.begin_read().doing("beginning a check")?;
            let records = txn.open_table(RECORDS).doing("opening records")?;
            let tombstones = txn.open_table(TOMBSTONES).doing("opening tombstones")?;
            let changes = txn.open_table(CHANGES).doing("opening changes")?;
            let buckets_table = txn.open_table(BUCKETS).doing("opening buckets")?;
            let mut buckets: BTreeMap<String, (BucketInfo, u64, u64)> = BTreeMap::new();
            for row in buckets_table.iter().doing("checking buckets")? {
                let (k, v) = row.doing("checking buckets")?;
                match decode_bucket(k.value(), v.value()) {
                    Ok(info) => {
                        buckets.insert(k.value().to_owned(), (info, 0, 0));
                    }
                    Err(e) => note(Problem::Index {
                        table: "buckets",
                        reason: e.to_string(),
                    }),
                }
            }
            for row in records.iter().doing("checking records")? {
                let (k, v) = row.doing("checking records")?;
                report.records_checked += 1;
                let Some((bucket, key)) = keys::split(k.value()) else {
                    note(Problem::Index {
                        table: "records",
                        reason: "a key without a bucket".into(),
                    });
                    continue;
                };
                let record = match Record::decode(v.value()) {
                    Ok(r) => r,
                    Err(reason) => {
                        note(Problem::Record {
                            bucket: bucket.into(),
                            key: KeyDisplay(key.to_vec()),
                            reason,
                        });
                        continue;
                    }
                };
                let at = |what: &str| {
                    format!(
                        "{what} for {bucket}/{} at rev {}",
                        KeyDisplay(key.to_vec()),
                        record.rev
                    )
                };
                match buckets.get_mut(bucket) {
                    Some((_, live, dead)) => *(if record.deleted { dead } else { live }) += 1,
                    None => note(Problem::Index {
                        table: "records",
                        reason: at("no bucket row"),
                    }),
                }
                let change = changes
                    .get(keys::change(bucket, record.rev).as_slice())
                    .doing("checking changes")?;
                if change.as_ref().map(|c| c.value()) != Some(key) {
                    note(Problem::Index {
                        table: "changes",
                        reason: at("missing change row"),
                    });
                }
                let tomb = tombstones
                    .get(k.value())
                    .doing("checking tombstones")?
                    .map(|t| t.value());
                match (record.deleted, tomb) {
                    (true, Some((rev, _))) if rev == record.rev => {}
                    (false, None) => {}
                    (true, _) => note(Problem::Index {
                        table: "tombstones",
                        reason: at("missing or stale tombstone row"),
                    }),
                    (false, Some(_)) => note(Problem::Index {
                        table: "tombstones",
                        reason: at("tombstone row for a live record"),
                    }),
                }
            }
            let tombstone_rows = tombstones.len().doing("counting tombstones")?;
            let change_rows = changes.len().doing("counting changes")?;
            let total_dead: u64 = buckets.values().map(|b| b.2).sum();
            let total_rows: u64 = buckets.values().map(|b| b.1 + b.2).sum();
            if tombstone_rows != total_dead {
                note(Problem::Index {
                    table: "tombstones",
                    reason: format!("{tombstone_rows} rows for {total_dead} tombstones"),
                });
            }
            if change_rows != total_rows {
                note(Problem::Index {
                    table: "changes",
                    reason: format!("{change_rows} rows for {total_rows} records"),
                });
            }
            let states = self
                .states
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let table_states: BTreeMap<_, _> = buckets
                .iter()
                .map(|(n, (i, _, _))| (n.clone(), i.state))
                .collect();
            if *states != table_states {
                note(Problem::Index {
                    table: "buckets",
                    reason: format!(
                        "states in memory {states:?} differ from the table {table_states:?}"
                    ),
                });
            }
            for (name, (info, live, dead)) in &buckets {
                if (info.records, info.tombstones) != (*live, *dead) {
                    note(Problem::Index {
                        table: "buckets",
                        reason: format!(
                            "{name}: counters say {} records and {} tombstones, found {live} and {dead}",
                            info.records, info.tombstones
                        ),
                    });
                }
            }
        }
        if problems_seen as usize > report.problems.len() {
            let more = problems_seen as usize - report.problems.len();
            report.problems.push(Problem::Index {
                table: "check",
                reason: format!("{more} more problems not listed"),
            });
        }
        report.file = match self.db.check_integrity() {
            Ok(true) => FileCheck::Clean,
            Ok(false) => FileCheck::Repaired,
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why))) => {
                FileCheck::Failed(why)
            }
            Err(e) => {
                return Err(Error::Storage {
                    doing: "checking page checksums",
                    source: e.into(),
                });
            }
        };
        Ok(report)
    }
}
