//! [`Writer`]: applies [`Op`]s inside one redb write transaction.
//!
//! Every op first checks everything that could reject it (limits, bucket, state, revision
//! order, expectation) and only then writes, so a rejected op leaves the transaction exactly as
//! it found it. The Raft layer relies on this: it answers the rejection and goes on applying
//! the rest of the batch in the same transaction.

use std::collections::BTreeMap;

use redb::{ReadableTable, Table, WriteTransaction};

use crate::bucket::{BucketInfo, BucketState, SYS_BUCKET, validate_bucket_name};
use crate::codec;
use crate::error::{Doing, Error, KeyDisplay, Result};
use crate::keys;
use crate::op::{Applied, Expect, Op, Stamp, TombstoneRef};
use crate::record::Record;
use crate::store::{BATCH_ITEMS_MAX, Limits, check_key, decode_bucket, decode_record};
use crate::tables::{BUCKET_FORMAT, BUCKETS, CHANGES, META, RECORDS, TOMBSTONES};

/// Meta key of the highest revision applied (u64 LE).
pub(crate) const META_LAST_REV: &str = "store.last_rev";
/// Meta names under this prefix belong to the store; [`Writer::set_meta`] refuses them.
pub const META_RESERVED_PREFIX: &str = "store.";

/// The open tables of one write transaction, and the bucket rows it changed.
pub struct Writer<'t> {
    records: Table<'t, &'static [u8], &'static [u8]>,
    tombstones: Table<'t, &'static [u8], (u64, u64)>,
    changes: Table<'t, &'static [u8], &'static [u8]>,
    buckets: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    /// Bucket rows read or changed in this transaction; `None` marks a dropped bucket. Written
    /// back by `flush`. A BTreeMap, so the write-back order is the same on every node.
    cache: BTreeMap<String, Option<BucketInfo>>,
    /// Buckets created, dropped or moved to another state in this transaction.
    state_changes: BTreeMap<String, Option<BucketState>>,
    dirty: bool,
    last_rev: u64,
    limits: Limits,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("last_rev", &self.last_rev)
            .finish_non_exhaustive()
    }
}

impl<'t> Writer<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction, limits: Limits) -> Result<Self> {
        let meta = txn.open_table(META).doing("opening meta")?;
        let last_rev = match meta.get(META_LAST_REV).doing("reading the last revision")? {
            Some(v) => {
                u64::from_le_bytes(v.value().try_into().map_err(|_| Error::CorruptIndex {
                    table: "meta",
                    reason: "last revision is not 8 bytes".to_owned(),
                })?)
            }
            None => 0,
        };
        Ok(Writer {
            records: txn.open_table(RECORDS).doing("opening records")?,
            tombstones: txn.open_table(TOMBSTONES).doing("opening tombstones")?,
            changes: txn.open_table(CHANGES).doing("opening changes")?,
            buckets: txn.open_table(BUCKETS).doing("opening buckets")?,
            meta,
            cache: BTreeMap::new(),
            state_changes: BTreeMap::new(),
            dirty: false,
            last_rev,
            limits,
        })
    }

    /// Highest revision applied so far (0 for a new store).
    pub fn last_rev(&self) -> u64 {
        self.last_rev
    }

    /// Keeps `value` under `name` in the meta table, in this transaction. Names starting with
    /// [`META_RESERVED_PREFIX`] belong to the store and are refused.
    pub fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        if name.starts_with(META_RESERVED_PREFIX) {
            return Err(Error::ReservedMeta {
                name: name.to_owned(),
            });
        }
        self.meta.insert(name, value).doing("writing meta")?;
        Ok(())
    }

    /// Reads a meta value as of this transaction.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(name)
            .doing("reading meta")?
            .map(|v| v.value().to_vec()))
    }

    /// Applies one op at `stamp`. On `Err` with a rejection nothing was changed; on a fatal
    /// error the transaction must be dropped.
    pub fn apply(&mut self, op: &Op, stamp: Stamp) -> Result<Applied> {
        if stamp.rev <= self.last_rev {
            return Err(Error::StaleRevision {
                rev: stamp.rev,
                last: self.last_rev,
            });
        }
        let applied = match op {
            Op::CreateBucket { bucket } => self.create_bucket(bucket, stamp)?,
            Op::DropBucket { bucket } => self.drop_bucket(bucket)?,
            Op::SetBucketState { bucket, state } => self.set_state(bucket, *state)?,
            Op::Put {
                bucket,
                key,
                value,
                expect,
            } => self.put(bucket, key, value, *expect, stamp)?,
            Op::Delete {
                bucket,
                key,
                expect,
            } => self.delete(bucket, key, *expect, stamp)?,
            Op::Purge { items } => self.purge(items)?,
            Op::DropBucketData { bucket } => self.drop_data(bucket)?,
            Op::Restore { bucket, records } => self.restore(bucket, records, stamp)?,
            Op::Hibernate {
                bucket,
                state,
                drop_data,
                record,
                expect,
            } => self.hibernate(bucket, *state, *drop_data, record, *expect, stamp)?,
        };
        self.last_rev = stamp.rev;
        self.dirty = true;
        Ok(applied)
    }

    /// Writes back the bucket rows and the last revision. Called once before commit; returns
    /// the buckets whose existence or state changed (`None`: dropped), for `Store::states`.
    pub(crate) fn flush(&mut self) -> Result<BTreeMap<String, Option<BucketState>>> {
        if !self.dirty {
            return Ok(BTreeMap::new());
        }
        for (name, info) in std::mem::take(&mut self.cache) {
            match info {
                Some(info) => {
                    let bytes = codec::seal(BUCKET_FORMAT, &info);
                    self.buckets
                        .insert(name.as_str(), bytes.as_slice())
                        .doing("writing a bucket")?;
                }
                None => {
                    self.buckets
                        .remove(name.as_str())
                        .doing("removing a bucket")?;
                }
            }
        }
        self.meta
            .insert(META_LAST_REV, &self.last_rev.to_le_bytes()[..])
            .doing("writing the last revision")?;
        self.dirty = false;
        Ok(std::mem::take(&mut self.state_changes))
    }

    /// The bucket's row as of this transaction, or `None` if it does not exist.
    fn load(&mut self, bucket: &str) -> Result<Option<BucketInfo>> {
        if let Some(info) = self.cache.get(bucket) {
            return Ok(info.clone());
        }
        let info = match self.buckets.get(bucket).doing("reading a bucket")? {
            Some(v) => Some(decode_bucket(bucket, v.value())?),
            None => None,
        };
        self.cache.insert(bucket.to_owned(), info.clone());
        Ok(info)
    }

    fn existing(&mut self, bucket: &str) -> Result<BucketInfo> {
        self.load(bucket)?.ok_or_else(|| Error::BucketNotFound {
            bucket: bucket.to_owned(),
        })
    }

    /// An existing bucket that callers may drop, pause or fill: any but `_sys`.
    fn user_bucket(&mut self, bucket: &str) -> Result<BucketInfo> {
        if bucket == SYS_BUCKET {
            return Err(Error::ReservedBucket {
                bucket: bucket.to_owned(),
            });
        }
        self.existing(bucket)
    }

    fn writable(&mut self, bucket: &str) -> Result<BucketInfo> {
        let info = self.existing(bucket)?;
        if !info.state.allows_writes() {
            return Err(Error::BucketPaused {
                bucket: bucket.to_owned(),
                state: info.state,
            });
        }
        Ok(info)
    }

    fn store_bucket(&mut self, bucket: &str, info: BucketInfo) {
        self.cache.insert(bucket.to_owned(), Some(info));
    }

    /// `store_bucket` for a change of existence or state.
    fn store_state(&mut self, bucket: &str, info: Option<BucketInfo>) {
        self.state_changes
            .insert(bucket.to_owned(), info.as_ref().map(|i| i.state));
        self.cache.insert(bucket.to_owned(), info);
    }

    fn current(&self, bucket: &str, key: &[u8], row: &[u8]) -> Result<Option<Record>> {
        match self.records.get(row).doing("reading a record")? {
            Some(v) => decode_record(bucket, key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn create_bucket(&mut self, bucket: &str, stamp: Stamp) -> Result<Applied> {
        validate_bucket_name(bucket)?;
        if self.load(bucket)?.is_some() {
            return Err(Error::BucketExists {
                bucket: bucket.to_owned(),
            });
        }
        self.store_state(bucket, Some(BucketInfo::new(stamp.rev)));
        Ok(Applied::Done)
    }

    fn drop_bucket(&mut self, bucket: &str) -> Result<Applied> {
        let info = self.user_bucket(bucket)?;
        self.remove_rows(bucket)?;
        self.store_state(bucket, None);
        Ok(Applied::Dropped {
            records: info.records,
            tombstones: info.tombstones,
        })
    }

    fn set_state(&mut self, bucket: &str, to: BucketState) -> Result<Applied> {
        let mut info = self.user_bucket(bucket)?;
        check_transition(bucket, info.state, to)?;
        info.state = to;
        self.store_state(bucket, Some(info));
        Ok(Applied::Done)
    }

    fn hibernate(
        &mut self,
        bucket: &str,
        to: BucketState,
        drop_data: bool,
        record: &[u8],
        expect: Expect,
        stamp: Stamp,
    ) -> Result<Applied> {
        let mut info = self.user_bucket(bucket)?;
        if drop_data {
            if !matches!(info.state, BucketState::Pausing | BucketState::Resuming) {
                return Err(Error::BucketState {
                    bucket: bucket.to_owned(),
                    state: info.state,
                    needed: "pausing or resuming",
                });
            }
            if to != BucketState::Paused {
                return Err(Error::InvalidTransition {
                    bucket: bucket.to_owned(),
                    from: info.state,
                    to,
                });
            }
        } else if to != info.state {
            check_transition(bucket, info.state, to)?;
        }
        if record.len() > self.limits.value_bytes_max {
            return Err(Error::ValueTooLarge {
                bucket: SYS_BUCKET.to_owned(),
                len: record.len(),
                max: self.limits.value_bytes_max,
            });
        }
        let key = crate::bucket::hibernation_key(bucket);
        check_key(SYS_BUCKET, &key)?;
        let current = self.current(SYS_BUCKET, &key, &keys::row(SYS_BUCKET, &key))?;
        if !expectation_holds(expect, current.as_ref()) {
            return Ok(Applied::Conflict {
                current: current.map(|r| r.rev),
            });
        }
        // Everything that could refuse the op has been checked; from here it only writes.
        if drop_data {
            self.drop_data(bucket)?;
        } else if to != info.state {
            info.state = to;
            self.store_state(bucket, Some(info));
        }
        self.put(SYS_BUCKET, &key, record, Expect::Any, stamp)
    }

    fn put(
        &mut self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        expect: Expect,
        stamp: Stamp,
    ) -> Result<Applied> {
        check_key(bucket, key)?;
        if value.len() > self.limits.value_bytes_max {
            return Err(Error::ValueTooLarge {
                bucket: bucket.to_owned(),
                len: value.len(),
                max: self.limits.value_bytes_max,
            });
        }
        let mut info = self.writable(bucket)?;
        let row = keys::row(bucket, key);
        let (old, new) = self.replace_record(bucket, key, &row, |old| {
            if !expectation_holds(expect, old) {
                return None;
            }
            let live = old.filter(|r| !r.deleted);
            Some(Record {
                value: value.to_vec(),
                rev: stamp.rev,
                create_rev: live.map_or(stamp.rev, |r| r.create_rev),
                version: live.map_or(1, |r| r.version + 1),
                mtime_ms: stamp.time_ms,
                deleted: false,
            })
        })?;
        if new.is_none() {
            let current = old.map(|r| r.rev);
            return Ok(Applied::Conflict { current });
        }
        match &old {
            None => info.records += 1,
            Some(r) if r.deleted => {
                info.records += 1;
                info.tombstones -= 1;
                self.tombstones
                    .remove(row.as_slice())
                    .doing("removing a tombstone")?;
            }
            Some(_) => {}
        }
        self.move_change(bucket, key, old.map(|r| r.rev), stamp.rev)?;
        self.store_bucket(bucket, info);
        Ok(Applied::Written { rev: stamp.rev })
    }

    fn delete(
        &mut self,
        bucket: &str,
        key: &[u8],
        expect: Expect,
        stamp: Stamp,
    ) -> Result<Applied> {
        check_key(bucket, key)?;
        let mut info = self.writable(bucket)?;
        let row = keys::row(bucket, key);
        let (old, new) = self.replace_record(bucket, key, &row, |old| {
            if !expectation_holds(expect, old) {
                return None;
            }
            let live = old.filter(|r| !r.deleted)?;
            Some(Record {
                value: Vec::new(),
                rev: stamp.rev,
                create_rev: live.create_rev,
                version: live.version + 1,
                mtime_ms: stamp.time_ms,
                deleted: true,
            })
        })?;
        if new.is_none() {
            if !expectation_holds(expect, old.as_ref()) {
                let current = old.map(|r| r.rev);
                return Ok(Applied::Conflict { current });
            }
            return Ok(Applied::NotFound);
        }
        info.records -= 1;
        info.tombstones += 1;
        self.tombstones
            .insert(row.as_slice(), (stamp.rev, stamp.time_ms))
            .doing("writing a tombstone")?;
        self.move_change(bucket, key, old.map(|r| r.rev), stamp.rev)?;
        self.store_bucket(bucket, info);
        Ok(Applied::Written { rev: stamp.rev })
    }

    /// Reads the record at `row` and, when `next` makes a new one of it, writes that in its
    /// place. Returns the old record and the one written, if any.
    ///
    /// One tree traversal serves both: redb's `get_mut` makes the leaf writable and lets the
    /// value be replaced where it is, while a `get` and then an `insert` would each walk the
    /// tree and read the same (often uncached) leaf, which measured as most of a put's cost.
    fn replace_record(
        &mut self,
        bucket: &str,
        key: &[u8],
        row: &[u8],
        next: impl FnOnce(Option<&Record>) -> Option<Record>,
    ) -> Result<(Option<Record>, Option<Record>)> {
        let mut slot = self.records.get_mut(row).doing("reading a record")?;
        let old = match &slot {
            Some(guard) => Some(decode_record(bucket, key, guard.value())?),
            None => None,
        };
        let Some(record) = next(old.as_ref()) else {
            return Ok((old, None));
        };
        let bytes = record.encode();
        // IMPORTANT: check the sealed bytes right before they are written, so a bug in encoding
        // cannot put a record on disk that the next read would call corrupt.
        debug_assert_eq!(Record::decode(&bytes).as_ref(), Ok(&record));
        match slot.as_mut() {
            Some(guard) => guard.insert(bytes.as_slice()).doing("writing a record")?,
            None => {
                drop(slot);
                self.records
                    .insert(row, bytes.as_slice())
                    .doing("writing a record")?;
            }
        }
        Ok((old, Some(record)))
    }

    /// Moves the key's changes row from its old revision (if any) to `rev`.
    fn move_change(&mut self, bucket: &str, key: &[u8], old: Option<u64>, rev: u64) -> Result<()> {
        if let Some(old) = old {
            self.changes
                .remove(keys::change(bucket, old).as_slice())
                .doing("moving a change")?;
        }
        self.changes
            .insert(keys::change(bucket, rev).as_slice(), key)
            .doing("writing a change")?;
        Ok(())
    }

    fn purge(&mut self, items: &[TombstoneRef]) -> Result<Applied> {
        if items.len() > BATCH_ITEMS_MAX {
            return Err(Error::LimitExceeded {
                what: "purge items",
                len: items.len(),
                max: BATCH_ITEMS_MAX,
            });
        }
        let (mut purged, mut skipped) = (0, 0);
        for item in items {
            let Some(mut info) = self.load(&item.bucket)? else {
                skipped += 1;
                continue;
            };
            let row = keys::row(&item.bucket, &item.key);
            // The guard: only a record that is still a tombstone with exactly this revision.
            // A key put again, or deleted again at another revision, since it was collected is
            // left alone.
            let still = match self.current(&item.bucket, &item.key, &row) {
                Ok(Some(r)) => r.deleted && r.rev == item.rev,
                Ok(None) => false,
                Err(e) if e.is_fatal() => return Err(e),
                // A corrupt record is never purged: it is reported by `check`, not removed blind.
                Err(_) => false,
            };
            if !still {
                skipped += 1;
                continue;
            }
            self.records
                .remove(row.as_slice())
                .doing("purging a record")?;
            self.tombstones
                .remove(row.as_slice())
                .doing("purging a tombstone")?;
            self.changes
                .remove(keys::change(&item.bucket, item.rev).as_slice())
                .doing("purging a change")?;
            info.tombstones -= 1;
            info.purge_floor = info.purge_floor.max(item.rev);
            self.store_bucket(&item.bucket, info);
            purged += 1;
        }
        Ok(Applied::Purged { purged, skipped })
    }

    fn drop_data(&mut self, bucket: &str) -> Result<Applied> {
        let mut info = self.user_bucket(bucket)?;
        if !matches!(info.state, BucketState::Pausing | BucketState::Resuming) {
            return Err(Error::BucketState {
                bucket: bucket.to_owned(),
                state: info.state,
                needed: "pausing or resuming",
            });
        }
        self.remove_rows(bucket)?;
        let dropped = Applied::Dropped {
            records: info.records,
            tombstones: info.tombstones,
        };
        info.records = 0;
        info.tombstones = 0;
        // In the same entry, so that no read ever sees the bucket readable and empty.
        info.state = BucketState::Paused;
        self.store_state(bucket, Some(info));
        Ok(dropped)
    }

    fn remove_rows(&mut self, bucket: &str) -> Result<()> {
        let (start, end) = (keys::row(bucket, &[]), bucket_end(bucket));
        let range = start.as_slice()..end.as_slice();
        self.records
            .retain_in(range.clone(), |_, _| false)
            .doing("dropping records")?;
        self.tombstones
            .retain_in(range.clone(), |_, _| false)
            .doing("dropping tombstones")?;
        self.changes
            .retain_in(range, |_, _| false)
            .doing("dropping changes")?;
        Ok(())
    }

    fn restore(
        &mut self,
        bucket: &str,
        records: &[(Vec<u8>, Record)],
        stamp: Stamp,
    ) -> Result<Applied> {
        if records.len() > BATCH_ITEMS_MAX {
            return Err(Error::LimitExceeded {
                what: "restore records",
                len: records.len(),
                max: BATCH_ITEMS_MAX,
            });
        }
        let mut info = self.user_bucket(bucket)?;
        if info.state != BucketState::Resuming {
            return Err(Error::BucketState {
                bucket: bucket.to_owned(),
                state: info.state,
                needed: "resuming",
            });
        }
        for (key, r) in records {
            check_key(bucket, key)?;
            let bad = |reason: String| Error::Corrupt {
                bucket: bucket.to_owned(),
                key: KeyDisplay(key.clone()),
                reason,
            };
            if r.value.len() > self.limits.value_bytes_max {
                return Err(Error::ValueTooLarge {
                    bucket: bucket.to_owned(),
                    len: r.value.len(),
                    max: self.limits.value_bytes_max,
                });
            }
            if r.deleted && !r.value.is_empty() {
                return Err(bad("a tombstone with a value".to_owned()));
            }
            if r.create_rev > r.rev || r.rev >= stamp.rev {
                return Err(bad(format!(
                    "revisions {}/{} do not fit below {}",
                    r.create_rev, r.rev, stamp.rev
                )));
            }
        }
        for (key, record) in records {
            let row = keys::row(bucket, key);
            let old = self.current(bucket, key, &row)?;
            match &old {
                Some(o) if o.deleted => {
                    info.tombstones -= 1;
                    self.tombstones
                        .remove(row.as_slice())
                        .doing("replacing a tombstone")?;
                }
                Some(_) => info.records -= 1,
                None => {}
            }
            if record.deleted {
                info.tombstones += 1;
                self.tombstones
                    .insert(row.as_slice(), (record.rev, record.mtime_ms))
                    .doing("restoring a tombstone")?;
            } else {
                info.records += 1;
            }
            let bytes = record.encode();
            self.records
                .insert(row.as_slice(), bytes.as_slice())
                .doing("restoring a record")?;
            self.move_change(bucket, key, old.map(|r| r.rev), record.rev)?;
        }
        self.store_bucket(bucket, info);
        Ok(Applied::Restored {
            records: records.len() as u64,
        })
    }
}

/// Refuses a move along the hibernation life cycle that [`BucketState`] does not draw.
fn check_transition(bucket: &str, from: BucketState, to: BucketState) -> Result<()> {
    use BucketState::*;
    let allowed = matches!(
        (from, to),
        (Active, Pausing)
            | (Pausing, Paused)
            | (Pausing, Active)
            | (Paused, Resuming)
            | (Resuming, Active)
            | (Resuming, Paused)
    );
    if allowed {
        Ok(())
    } else {
        Err(Error::InvalidTransition {
            bucket: bucket.to_owned(),
            from,
            to,
        })
    }
}

/// Whether `expect` holds for the key's current record.
fn expectation_holds(expect: Expect, current: Option<&Record>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none_or(|r| r.deleted),
        Expect::Rev(rev) => current.is_some_and(|r| r.rev == rev),
    }
}

/// The first row key past every row of `bucket`.
pub(crate) fn bucket_end(bucket: &str) -> Vec<u8> {
    let mut end = bucket.as_bytes().to_vec();
    end.push(keys::SEP + 1);
    end
}
