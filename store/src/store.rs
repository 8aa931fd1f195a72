//! [`Store`]: one redb file (`state.redb`) and the reads over it.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::bucket::{BucketInfo, BucketState, SYS_BUCKET};
use crate::codec;
use crate::error::{Doing, Error, KeyDisplay, Result};
use crate::keys;
use crate::op::TombstoneRef;
use crate::record::Record;
use crate::tables::{
    BUCKET_FORMAT, BUCKETS, CHANGES, META, META_FORMAT, RECORDS, STORE_FORMAT, TOMBSTONES,
};
use crate::write::Writer;

/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Default longest value, in bytes ([`Config::value_bytes_max`]).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The most [`Config::value_bytes_max`] may be set to.
pub const VALUE_BYTES_MAX_CEILING: usize = 64 << 20;
/// Default redb page cache ([`Config::cache_bytes`]). Small on purpose: the store is embedded in
/// someone else's process, and its records are small.
pub const CACHE_BYTES_DEFAULT: usize = 32 << 20;
/// Most items a page of any read may hold.
pub const PAGE_ITEMS_MAX: usize = 10_000;
/// Most rows one page of a read looks at before it returns (with a resume point), however few
/// of them matched: a scan over many tombstones, or a changes feed under a rare prefix, stays
/// bounded in time.
pub const PAGE_ROWS_SCANNED_MAX: usize = 8 * PAGE_ITEMS_MAX;
/// Most items of one `Purge` or `Restore` op.
pub const BATCH_ITEMS_MAX: usize = 10_000;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Config {
    /// The redb file, conventionally `<data dir>/state.redb`. Created if missing.
    pub path: PathBuf,
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// Longest value a put may write, in bytes (at most [`VALUE_BYTES_MAX_CEILING`]).
    pub value_bytes_max: usize,
    /// Whether each write transaction is fsynced before it returns. The Raft layer may turn it
    /// off when the log already holds the same entries durably.
    pub durable: bool,
}

impl Config {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Config {
            path: path.into(),
            cache_bytes: CACHE_BYTES_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            durable: true,
        }
    }
}

/// Limits every write is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) value_bytes_max: usize,
}

/// Existence and state of every bucket as of the last commit: what every read checks first.
pub(crate) type States = Arc<BTreeMap<String, BucketState>>;

/// The record store of one node.
///
/// Reads take `&self` and see one committed state each; writes go through [`Store::write`],
/// one redb write transaction at a time. [`Store::compact`] and [`Store::check`] need
/// `&mut self`: they take the store out of service.
///
/// Bucket states are kept in memory too (`states`), so a read need not open the `buckets`
/// table. IMPORTANT: a commit that changes any bucket's existence or state holds the write
/// lock of `states` from before the commit until the map is replaced, and [`Store::read`]
/// begins its redb snapshot under the read lock. So a view's snapshot and its states always
/// come from the same commit.
#[derive(Debug)]
pub struct Store {
    pub(crate) db: Database,
    pub(crate) path: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) durable: bool,
    pub(crate) cache_bytes: usize,
    pub(crate) states: RwLock<States>,
}

impl Store {
    /// Opens the store at `config.path`, creating the file, its tables and the `_sys` bucket
    /// on first use, and refusing a file of another format version.
    pub fn open(config: Config) -> Result<Store> {
        Store::check_config(&config)?;
        crate::maintenance::remove_if_present(&crate::maintenance::compacting_path(&config.path))?;
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create(&config.path)
            .doing("opening the store file")?;
        crate::private::restrict(&config.path)
            .map_err(crate::error::io("restricting the store file"))?;
        Store::on(db, config)
    }

    /// The same on `backend` instead of the file at `config.path` (which then only names the
    /// store in errors): what crash and fault-injection tests run the store on. A store on a
    /// backend cannot be compacted (compaction rebuilds the file beside it).
    pub fn open_with_backend(config: Config, backend: impl redb::StorageBackend) -> Result<Store> {
        Store::check_config(&config)?;
        let db = Database::builder()
            .set_cache_size(config.cache_bytes)
            .create_with_backend(backend)
            .doing("opening the store")?;
        Store::on(db, config)
    }

    fn check_config(config: &Config) -> Result<()> {
        if config.value_bytes_max > VALUE_BYTES_MAX_CEILING {
            return Err(Error::LimitExceeded {
                what: "value_bytes_max",
                len: config.value_bytes_max,
                max: VALUE_BYTES_MAX_CEILING,
            });
        }
        Ok(())
    }

    fn on(db: Database, config: Config) -> Result<Store> {
        let store = Store {
            db,
            path: config.path,
            limits: Limits {
                value_bytes_max: config.value_bytes_max,
            },
            durable: config.durable,
            cache_bytes: config.cache_bytes,
            states: RwLock::new(Arc::default()),
        };
        store.init()?;
        store.reload_states()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        let txn = self.db.begin_write().doing("beginning the first write")?;
        {
            let mut meta = txn.open_table(META).doing("opening meta")?;
            let found = meta
                .get(META_FORMAT)
                .doing("reading the format version")?
                .map(|v| {
                    let b = v.value();
                    b.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX)
                });
            match found {
                Some(STORE_FORMAT) => {}
                Some(found) => {
                    return Err(Error::FormatVersion {
                        path: self.path.display().to_string(),
                        found,
                        supported: STORE_FORMAT,
                    });
                }
                None => {
                    meta.insert(META_FORMAT, &STORE_FORMAT.to_le_bytes()[..])
                        .doing("writing the format version")?;
                }
            }
            txn.open_table(RECORDS).doing("creating records")?;
            txn.open_table(TOMBSTONES).doing("creating tombstones")?;
            txn.open_table(CHANGES).doing("creating changes")?;
            let mut buckets = txn.open_table(BUCKETS).doing("opening buckets")?;
            if buckets.get(SYS_BUCKET).doing("reading buckets")?.is_none() {
                let sys = codec::seal(BUCKET_FORMAT, &BucketInfo::new(0));
                buckets
                    .insert(SYS_BUCKET, sys.as_slice())
                    .doing("creating _sys")?;
            }
        }
        txn.commit().doing("committing the first write")
    }

    /// Reads every bucket's state from the table into memory.
    pub(crate) fn reload_states(&self) -> Result<()> {
        let mut guard = self.states.write().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_read().doing("beginning a read")?;
        let view = ReadView {
            txn,
            states: Arc::default(),
        };
        let states = view
            .buckets()?
            .into_iter()
            .map(|(name, info)| (name, info.state))
            .collect();
        *guard = Arc::new(states);
        Ok(())
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Longest value a put may write.
    pub fn value_bytes_max(&self) -> usize {
        self.limits.value_bytes_max
    }

    /// A consistent view of the store as of now: every read through it sees the same state.
    pub fn read(&self) -> Result<ReadView> {
        let states = self.states.read().unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_read().doing("beginning a read")?;
        Ok(ReadView {
            txn,
            states: Arc::clone(&states),
        })
    }

    /// Runs `f` in one write transaction and commits what it did, or nothing if it fails.
    ///
    /// A rejection from [`Writer::apply`] leaves the transaction as it was, so `f` may answer it
    /// and go on; a fatal error ([`Error::is_fatal`]) must be returned, which drops everything.
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let mut txn = self.db.begin_write().doing("beginning a write")?;
        if !self.durable {
            txn.set_durability(redb::Durability::None)
                .doing("setting durability")?;
        }
        let (out, changed) = {
            let mut writer = Writer::open(&txn, self.limits)?;
            let out = f(&mut writer)?;
            (out, writer.flush()?)
        };
        if changed.is_empty() {
            txn.commit().doing("committing a write")?;
            return Ok(out);
        }
        let mut guard = self.states.write().unwrap_or_else(PoisonError::into_inner);
        txn.commit().doing("committing a write")?;
        let mut states = BTreeMap::clone(&guard);
        for (name, state) in changed {
            match state {
                Some(state) => states.insert(name, state),
                None => states.remove(&name),
            };
        }
        *guard = Arc::new(states);
        Ok(out)
    }

    /// Makes every commit so far durable (one fsync). A store opened with `durable: false`
    /// commits without fsync; a caller that can replay lost commits (the Raft layer, from its
    /// log) calls this before it relies on them, for example before building a snapshot that
    /// lets it drop log entries.
    pub fn sync(&self) -> Result<()> {
        let txn = self.db.begin_write().doing("beginning a sync")?;
        txn.commit().doing("syncing the store")
    }

    /// Applies one op in its own transaction.
    pub fn apply(&self, op: &crate::Op, stamp: crate::Stamp) -> Result<crate::Applied> {
        self.write(|w| w.apply(op, stamp))
    }

    /// Shorthand for [`ReadView::get`] on a fresh view.
    pub fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Record>> {
        self.read()?.get(bucket, key, false)
    }

    /// Shorthand for [`ReadView::bucket`] on a fresh view.
    pub fn bucket(&self, bucket: &str) -> Result<BucketInfo> {
        self.read()?.bucket(bucket)
    }
}

/// A page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub items: Vec<(Vec<u8>, Record)>,
    /// Where the next page starts (pass it as [`Scan::after`]); `None` at the end. A page may
    /// hold fewer items than asked for and still have a next one, when it skipped many
    /// tombstones.
    pub next: Option<Vec<u8>>,
}

/// What a scan reads: keys starting with `prefix`, after `after`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub prefix: Vec<u8>,
    pub after: Option<Vec<u8>>,
    pub limit: usize,
    pub include_tombstones: bool,
}

impl Scan {
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Scan {
        Scan {
            prefix: prefix.into(),
            after: None,
            limit: 1000,
            include_tombstones: false,
        }
    }
    pub fn all() -> Scan {
        Scan::prefix(Vec::new())
    }
}

/// One entry of a changes feed: the key's record as of its latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub record: Record,
}

/// The answer of a changes feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Changes in revision order. Resume with `after_rev = next_after_rev`; `more` says whether
    /// another page may follow.
    Events {
        events: Vec<Change>,
        next_after_rev: u64,
        more: bool,
    },
    /// Some changes after the asked revision were purged: re-list the bucket and follow the
    /// feed from the listing's revision, at or above `floor`.
    Compacted { floor: u64 },
}

/// What a tombstone collection returns, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneQuery {
    /// Exclusive resume point `(bucket, key)`; `None` starts at the first tombstone.
    pub after: Option<(String, Vec<u8>)>,
    pub limit: usize,
    /// Only tombstones at or below this revision (the node's applied index).
    pub max_rev: u64,
    /// Only tombstones whose delete was stamped at or before this time (now - min_age).
    pub deleted_at_or_before_ms: u64,
    /// Per bucket: tombstones above this revision are pinned (an open watcher has not seen
    /// them yet) and are not offered.
    pub pins: BTreeMap<String, u64>,
}

/// A page of collectable tombstones, sorted by `(bucket, key)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstonePage {
    pub items: Vec<TombstoneRef>,
    /// Resume point for the next page; `None` at the end.
    pub next: Option<(String, Vec<u8>)>,
}

/// A consistent read-only view of the store.
pub struct ReadView {
    txn: ReadTransaction,
    states: States,
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadView")
    }
}

pub(crate) fn decode_bucket(name: &str, bytes: &[u8]) -> Result<BucketInfo> {
    codec::unseal(BUCKET_FORMAT, bytes).map_err(|reason| Error::CorruptIndex {
        table: "buckets",
        reason: format!("{name:?}: {reason}"),
    })
}

pub(crate) fn decode_record(bucket: &str, key: &[u8], bytes: &[u8]) -> Result<Record> {
    Record::decode(bytes).map_err(|reason| Error::Corrupt {
        bucket: bucket.to_owned(),
        key: KeyDisplay(key.to_vec()),
        reason,
    })
}

pub(crate) fn check_key(bucket: &str, key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::KeyEmpty {
            bucket: bucket.to_owned(),
        });
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::KeyTooLarge {
            bucket: bucket.to_owned(),
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_limit(what: &'static str, limit: usize) -> Result<()> {
    if limit == 0 || limit > PAGE_ITEMS_MAX {
        return Err(Error::LimitExceeded {
            what,
            len: limit,
            max: PAGE_ITEMS_MAX,
        });
    }
    Ok(())
}

impl ReadView {
    /// A bucket's bookkeeping, whatever its state.
    pub fn bucket(&self, bucket: &str) -> Result<BucketInfo> {
        let table = self.txn.open_table(BUCKETS).doing("opening buckets")?;
        let row = table.get(bucket).doing("reading a bucket")?;
        match row {
            Some(v) => decode_bucket(bucket, v.value()),
            None => Err(Error::BucketNotFound {
                bucket: bucket.to_owned(),
            }),
        }
    }

    /// Every bucket, `_sys` included, by name.
    pub fn buckets(&self) -> Result<Vec<(String, BucketInfo)>> {
        let table = self.txn.open_table(BUCKETS).doing("opening buckets")?;
        let mut out = Vec::new();
        for row in table.iter().doing("listing buckets")? {
            let (k, v) = row.doing("listing buckets")?;
            out.push((k.value().to_owned(), decode_bucket(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The state of a bucket as of this view, without reading its row.
    pub fn bucket_state(&self, bucket: &str) -> Result<BucketState> {
        let state = self.states.get(bucket).copied();
        state.ok_or_else(|| Error::BucketNotFound {
            bucket: bucket.to_owned(),
        })
    }

    fn readable(&self, bucket: &str) -> Result<()> {
        let state = self.bucket_state(bucket)?;
        if !state.allows_reads() {
            return Err(Error::BucketPaused {
                bucket: bucket.to_owned(),
                state,
            });
        }
        Ok(())
    }

    /// The key's record; a tombstone reads as `None` unless `include_tombstones`.
    pub fn get(
        &self,
        bucket: &str,
        key: &[u8],
        include_tombstones: bool,
    ) -> Result<Option<Record>> {
        check_key(bucket, key)?;
        self.readable(bucket)?;
        let table = self.txn.open_table(RECORDS).doing("opening records")?;
        let Some(v) = table
            .get(keys::row(bucket, key).as_slice())
            .doing("reading a record")?
        else {
            return Ok(None);
        };
        let record = decode_record(bucket, key, v.value())?;
        Ok((include_tombstones || !record.deleted).then_some(record))
    }

    /// Records of a bucket in key order.
    pub fn scan(&self, bucket: &str, scan: &Scan) -> Result<ScanPage> {
        check_limit("scan limit", scan.limit)?;
        self.readable(bucket)?;
        let table = self.txn.open_table(RECORDS).doing("opening records")?;
        let range = keys::bucket_range(bucket, &scan.prefix, scan.after.as_deref());
        let mut items = Vec::new();
        let mut last = None;
        let rows = table
            .range::<&[u8]>(as_slices(&range))
            .doing("scanning records")?;
        for (scanned, row) in rows.enumerate() {
            let (k, v) = row.doing("scanning records")?;
            let key = &k.value()[bucket.len() + 1..];
            if items.len() == scan.limit || scanned == PAGE_ROWS_SCANNED_MAX {
                return Ok(ScanPage { items, next: last });
            }
            let record = decode_record(bucket, key, v.value())?;
            last = Some(key.to_vec());
            if scan.include_tombstones || !record.deleted {
                items.push((key.to_vec(), record));
            }
        }
        Ok(ScanPage { items, next: None })
    }

    /// The latest change of every key of `bucket` under `prefix` changed after `after_rev`, in
    /// revision order. A key changed twice since `after_rev` shows once, at its latest revision:
    /// the store keeps one version per key.
    pub fn changes(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: usize,
    ) -> Result<Changes> {
        check_limit("changes limit", limit)?;
        self.readable(bucket)?;
        let info = self.bucket(bucket)?;
        if after_rev < info.purge_floor {
            return Ok(Changes::Compacted {
                floor: info.purge_floor,
            });
        }
        let changes = self.txn.open_table(CHANGES).doing("opening changes")?;
        let records = self.txn.open_table(RECORDS).doing("opening records")?;
        let mut events = Vec::new();
        let mut next_after_rev = after_rev;
        let Some(from_rev) = after_rev.checked_add(1) else {
            return Ok(Changes::Events {
                events,
                next_after_rev,
                more: false,
            });
        };
        let start = keys::change(bucket, from_rev);
        let end = keys::row(bucket, &[0xff; 9]); // above every 8-byte revision
        let rows = changes
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .doing("reading changes")?;
        for (scanned, row) in rows.enumerate() {
            let (k, v) = row.doing("reading changes")?;
            if events.len() == limit || scanned == PAGE_ROWS_SCANNED_MAX {
                return Ok(Changes::Events {
                    events,
                    next_after_rev,
                    more: true,
                });
            }
            let rev = keys::change_rev(&k.value()[bucket.len() + 1..]).ok_or_else(|| {
                Error::CorruptIndex {
                    table: "changes",
                    reason: format!("bad revision in bucket {bucket:?}"),
                }
            })?;
            next_after_rev = rev;
            let key = v.value();
            if !key.starts_with(prefix) {
                continue;
            }
            let bytes = records
                .get(keys::row(bucket, key).as_slice())
                .doing("reading a record")?;
            let record = match bytes {
                Some(b) => decode_record(bucket, key, b.value())?,
                None => {
                    return Err(Error::CorruptIndex {
                        table: "changes",
                        reason: format!("rev {rev} names a missing record in bucket {bucket:?}"),
                    });
                }
            };
            if record.rev != rev {
                return Err(Error::CorruptIndex {
                    table: "changes",
                    reason: format!(
                        "rev {rev} names a record at rev {} in bucket {bucket:?}",
                        record.rev
                    ),
                });
            }
            events.push(Change {
                key: key.to_vec(),
                record,
            });
        }
        Ok(Changes::Events {
            events,
            next_after_rev,
            more: false,
        })
    }

    /// Collectable tombstones across all buckets, sorted by `(bucket, key)`. Costs
    /// O(tombstones looked at): it reads the tombstone index only, never the records.
    pub fn tombstones(&self, query: &TombstoneQuery) -> Result<TombstonePage> {
        check_limit("tombstone page limit", query.limit)?;
        let table = self
            .txn
            .open_table(TOMBSTONES)
            .doing("opening tombstones")?;
        let start = query.after.as_ref().map(|(b, k)| keys::row(b, k));
        let range = match &start {
            Some(s) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(s.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<&[u8]>(..),
        }
        .doing("reading tombstones")?;
        let mut items = Vec::new();
        let mut last: Option<(String, Vec<u8>)> = None;
        for (scanned, row) in range.enumerate() {
            let (k, v) = row.doing("reading tombstones")?;
            if items.len() == query.limit || scanned == PAGE_ROWS_SCANNED_MAX {
                return Ok(TombstonePage { items, next: last });
            }
            let (bucket, key) = keys::split(k.value()).ok_or_else(|| Error::CorruptIndex {
                table: "tombstones",
                reason: "a key without a bucket".to_owned(),
            })?;
            let (rev, mtime_ms) = v.value();
            last = Some((bucket.to_owned(), key.to_vec()));
            let pinned = query.pins.get(bucket).is_some_and(|pin| rev > *pin);
            if rev <= query.max_rev && mtime_ms <= query.deleted_at_or_before_ms && !pinned {
                items.push(TombstoneRef {
                    bucket: bucket.to_owned(),
                    key: key.to_vec(),
                    rev,
                });
            }
        }
        Ok(TombstonePage { items, next: None })
    }

    /// A value the Raft layer (or another user of the store) kept with [`Writer::set_meta`].
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let table = self.txn.open_table(META).doing("opening meta")?;
        Ok(table
            .get(name)
            .doing("reading meta")?
            .map(|v| v.value().to_vec()))
    }

    pub(crate) fn txn(&self) -> &ReadTransaction {
        &self.txn
    }
}

pub(crate) fn as_slices(
    range: &(std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>),
) -> impl RangeBounds<&[u8]> + '_ {
    fn b(x: &std::ops::Bound<Vec<u8>>) -> std::ops::Bound<&[u8]> {
        match x {
            std::ops::Bound::Included(v) => std::ops::Bound::Included(v.as_slice()),
            std::ops::Bound::Excluded(v) => std::ops::Bound::Excluded(v.as_slice()),
            std::ops::Bound::Unbounded => std::ops::Bound::Unbounded,
        }
    }
    (b(&range.0), b(&range.1))
}
