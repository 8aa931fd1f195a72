//! Taking care of the file: sizes, compaction, integrity check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value,
};

use crate::bucket::BucketInfo;
use crate::error::{Doing, Error, KeyDisplay, Result, io};
use crate::keys;
use crate::record::Record;
use crate::store::{Store, decode_bucket};
use crate::tables::{BUCKETS, CHANGES, META, RECORDS, TOMBSTONES};

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
    /// Rows copied into the new file, over every table.
    pub rows: u64,
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

/// A copy transaction of [`Store::compact`] commits once it holds this many rows or
/// [`COPY_TXN_BYTES`], whichever comes first: memory stays bounded whatever the store's size.
const COPY_TXN_ROWS: u64 = 20_000;
const COPY_TXN_BYTES: usize = 16 << 20;

/// Where [`Store::compact`] builds the new file: next to the store, removed by
/// [`Store::open`] if a crash left it there.
pub(crate) fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".compacting");
    PathBuf::from(name)
}

pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io("removing a leftover compaction file")(e))
        }
        _ => Ok(()),
    }
}

/// Makes a rename in the file's directory durable.
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the store's directory"))
}

/// Copies one table from `from` into `to` in key order, committing every
/// [`COPY_TXN_ROWS`] rows or [`COPY_TXN_BYTES`] bytes without fsync. Returns the rows copied.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64> {
    let source = from.open_table(def).doing("opening a table to copy")?;
    let mut rows = source.iter().doing("reading a table to copy")?;
    let mut copied = 0;
    loop {
        let mut txn = to.begin_write().doing("beginning a copy")?;
        txn.set_durability(Durability::None)
            .doing("setting durability")?;
        let (mut n, mut bytes, mut done) = (0, 0, false);
        {
            let mut target = txn.open_table(def).doing("opening a copied table")?;
            while n < COPY_TXN_ROWS && bytes < COPY_TXN_BYTES {
                let Some(row) = rows.next() else {
                    done = true;
                    break;
                };
                let (k, v) = row.doing("reading a row to copy")?;
                bytes +=
                    K::as_bytes(&k.value()).as_ref().len() + V::as_bytes(&v.value()).as_ref().len();
                target.insert(k.value(), v.value()).doing("copying a row")?;
                n += 1;
            }
        }
        txn.commit().doing("committing a copy")?;
        copied += n;
        if done {
            return Ok(copied);
        }
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

    /// Compacts the file by rebuilding it: every table is copied in key order into a new file
    /// next to it (`<file>.compacting`), which is committed durably and renamed over the old
    /// one. Needs `&mut self`: no read or write may be open meanwhile, which is what taking the
    /// store out of service means. Reports file bytes before and after.
    ///
    /// Why a copy and not redb's in-place `compact`: redb moves pages but keeps the B-trees as
    /// they are, so after a purge removes most of a bucket its leaves stay half empty (1.6x the
    /// size of a fresh store in `docs/benchmarks.md`). Keys inserted in order fill each leaf.
    ///
    /// Crash safety: until the rename the old file is untouched and the partial copy is removed
    /// by the next [`Store::open`]; the rename is atomic and the copy is durable before it. On
    /// any error (a full disk included) the copy is removed and the store goes on with the old
    /// file. It needs free space for the live data, at most the old file's size.
    pub fn compact(&mut self) -> Result<CompactReport> {
        let file_len = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(io("reading the file size"))
        };
        let bytes_before = file_len(&self.path)?;
        let copy_path = compacting_path(&self.path);
        remove_if_present(&copy_path)?;
        let started = std::time::Instant::now();
        let copied = self.copy_into(&copy_path);
        let copy_ms = started.elapsed().as_millis() as u64;
        let (copy, rows) = match copied {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&copy_path);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&copy_path, &self.path) {
            drop(copy);
            let _ = std::fs::remove_file(&copy_path);
            return Err(io("renaming the compacted file over the store")(e));
        }
        sync_dir(&self.path)?;
        // The old file's last handle closes here; its space returns to the file system.
        let swapped = std::time::Instant::now();
        drop(std::mem::replace(&mut self.db, copy));
        let close_ms = swapped.elapsed().as_millis() as u64;
        self.reload_states()?;
        let bytes_after = file_len(&self.path)?;
        tracing::info!(
            path = %self.path.display(),
            bytes_before,
            bytes_after,
            rows,
            copy_ms,
            close_ms,
            "compacted"
        );
        Ok(CompactReport {
            bytes_before,
            bytes_after,
            rows,
        })
    }

    /// Copies every table into a new database at `path`, in key order, in transactions of
    /// bounded size; the last commit is durable. Refuses a file holding a table it does not
    /// know, so a compaction never drops data it cannot copy.
    fn copy_into(&self, path: &Path) -> Result<(Database, u64)> {
        let from = self.db.begin_read().doing("beginning the copy")?;
        for table in from.list_tables().doing("listing tables")? {
            let name = table.name();
            let known = [
                RECORDS.name(),
                TOMBSTONES.name(),
                CHANGES.name(),
                BUCKETS.name(),
                META.name(),
            ];
            if !known.contains(&name) {
                return Err(Error::UnknownTable {
                    name: name.to_owned(),
                });
            }
        }
        let mut to = Database::builder()
            .set_cache_size(self.cache_bytes)
            .create(path)
            .doing("creating the compacted file")?;
        crate::private::restrict(path)
            .map_err(crate::error::io("restricting the compacted file"))?;
        let mut rows = 0;
        rows += copy_table(&from, &to, RECORDS)?;
        rows += copy_table(&from, &to, TOMBSTONES)?;
        rows += copy_table(&from, &to, CHANGES)?;
        rows += copy_table(&from, &to, BUCKETS)?;
        rows += copy_table(&from, &to, META)?;
        // One durable commit makes every non-durable one before it durable.
        to.begin_write()
            .doing("beginning the last copy commit")?
            .commit()
            .doing("committing the compacted file")?;
        // The copy's pages are full, but redb grows a file in whole regions; one in-place pass
        // trims the unused end.
        to.compact().doing("trimming the compacted file")?;
        Ok((to, rows))
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
