//! The node's side of hibernation (see `metakv_gc::hibernate` for the protocol and its pure
//! parts). A pause or a resume runs as one task on the leader; every step is an
//! `Op::Hibernate` entry that expects the record of the step before. The driver aborts the
//! tasks when this node stops leading, and runs the janitor when it starts leading and on a
//! timer.
//!
//! Archives are reached through [`Archives`]: [`UriArchives`] opens a local directory
//! (`file:///dir` or a plain path) or, built with the `s3` feature, an S3-compatible store
//! (`s3://bucket/prefix`, configured from the usual `AWS_*` environment variables).
//!
//! - `archives`: the objects of an operation's archive under its location (where locations
//!   lead, [`Archives`] and [`UriArchives`], is `crate::archives`, below the node);
//! - `stream`: bytes between the store's archive format and an object store;
//! - `ops`: a pause and a resume, step by step;
//! - `janitor`: the repairs of what a crash or a leader change interrupted;
//! - this file: the operations' registry and the driver that follows leadership.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metakv_gc::hibernate::{
    ARCHIVE_OBJECT, ChunkEntry, HibernationRecord, MANIFEST_FORMAT, MANIFEST_OBJECT, Manifest,
    OpId, OpKind, Repair, Seen, janitor,
};
use metakv_store::archive::{ARCHIVE_FORMAT, ArchiveReader, Frame, Scope};
use metakv_store::{
    Applied, BucketState, Expect, HIBERNATION_KEY_PREFIX, Op, SYS_BUCKET, Scan, hibernation_key,
};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::sync::{mpsc, watch};

use crate::api::{HibernationStatus, OpProgress};
use crate::error::{Error, Result};
use crate::node_core::{Core, DRIVER_TICK, next_tick, now_ms};
use crate::sync::lock;

mod archives;
mod janitor;
mod ops;
mod stream;
mod visible;

use crate::config::HibernationConfig;
use archives::{delete_objects, objects};
use stream::{Handoff, download, read_archive};

/// Bytes handed from the exporting thread to the uploader at a time.
pub(super) const HANDOFF_BYTES: usize = 1 << 20;
/// `Restore` entries (archive chunks of up to 1 MiB) on their way through Raft at once: one
/// chunk is replicated while the one before is applied.
pub(super) const RESTORES_IN_FLIGHT: usize = 4;
/// Size of each part of a multipart upload (S3 wants at least 5 MiB).
pub(super) const PART_BYTES: usize = 8 << 20;

#[derive(Debug)]
pub(super) struct Running {
    op: OpId,
    progress: Arc<Mutex<OpProgress>>,
    task: Option<tokio::task::AbortHandle>,
}

/// The hibernation state every node keeps (used while it leads).
#[derive(Debug)]
pub(crate) struct HibernationState {
    pub(crate) config: HibernationConfig,
    running: Mutex<BTreeMap<String, Running>>,
    seq: AtomicU64,
}

impl HibernationState {
    pub(crate) fn new(config: HibernationConfig) -> HibernationState {
        HibernationState {
            config,
            running: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
        }
    }

    pub(super) fn progress(&self, bucket: &str) -> Option<OpProgress> {
        lock(&self.running)
            .get(bucket)
            .map(|r| lock(&r.progress).clone())
    }

    pub(super) fn abort_all(&self, why: &str) {
        for (bucket, r) in std::mem::take(&mut *lock(&self.running)) {
            if let Some(task) = r.task {
                task.abort();
                tracing::warn!(%bucket, op = %r.op, "hibernation task stopped: {why}");
            }
        }
    }
}

/// Removes a bucket's entry from the running map when dropped, so that a task that ends in
/// any way (done, failed, aborted) frees its bucket.
pub(super) struct Registration {
    state: Weak<HibernationState>,
    bucket: String,
    op: OpId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            let mut running = lock(&state.running);
            if running.get(&self.bucket).is_some_and(|r| r.op == self.op) {
                running.remove(&self.bucket);
            }
        }
    }
}

pub(super) fn archive_err(e: impl std::fmt::Display) -> Error {
    Error::Archive(e.to_string())
}

/// Runs on every node until `stop`: aborts the operations of a leadership this node lost,
/// and runs the janitor when it starts leading and every `janitor_interval_ms` while it leads.
pub(crate) async fn drive(
    core: Weak<Core>,
    state: Arc<HibernationState>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = state.config.janitor_interval_ms;
    let mut tick = tokio::time::interval(DRIVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led: Option<u64> = None;
    let mut last_janitor = tokio::time::Instant::now();
    // Whether the janitor must run on the next tick: a new leadership, or a run that failed.
    let mut janitor_due = false;
    while let Some(core) = next_tick(&core, &mut tick, &mut stop).await {
        let node = Hibernation {
            core,
            state: Arc::clone(&state),
        };
        let term = node.leading_term().ok();
        if term != led {
            if led.is_some() {
                state.abort_all("this node no longer leads");
            }
            led = term;
            janitor_due = term.is_some();
        }
        if term.is_some()
            && interval > 0
            && last_janitor.elapsed() >= Duration::from_millis(interval)
        {
            janitor_due = true;
        }
        if janitor_due {
            last_janitor = tokio::time::Instant::now();
            janitor_due = match node.run_janitor().await {
                Ok(()) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "janitor did not run; trying again");
                    true
                }
            };
        }
    }
    state.abort_all("the node stops");
}

/// Hibernation on one node: the node core and the node's hibernation state. Cloning shares
/// both.
#[derive(Debug, Clone)]
pub(crate) struct Hibernation {
    pub(crate) core: Arc<Core>,
    pub(crate) state: Arc<HibernationState>,
}

impl Hibernation {
    /// This node's term if it leads; `NotLeader` otherwise.
    pub(super) fn leading_term(&self) -> Result<u64> {
        self.core.leading().map_err(Error::from)
    }

    /// Proposes a hibernation step; `Ok(rev)` of the new record, or `Busy` when the record
    /// moved on (the step belongs to an operation that was replaced or rolled back).
    pub(super) async fn step(
        &self,
        bucket: &str,
        state: BucketState,
        drop_data: bool,
        record: &HibernationRecord,
        expect: Expect,
    ) -> Result<u64> {
        match self
            .core
            .propose_here(
                Op::Hibernate {
                    bucket: bucket.to_owned(),
                    state,
                    drop_data,
                    record: record.encode(),
                    expect,
                },
                // As long as Raft takes: a step is never left half-known to its operation.
                None,
            )
            .await?
        {
            Applied::Written { rev } => Ok(rev),
            Applied::Conflict { .. } => Err(Error::Busy(format!(
                "bucket {bucket:?}: its hibernation record changed under operation {}",
                record.op
            ))),
            other => Err(Error::Protocol(format!(
                "a hibernation step answered {other:?}"
            ))),
        }
    }

    /// The bucket's state and its hibernation record with the record's revision, as this
    /// node has them.
    pub(super) async fn hibernation_of(
        &self,
        bucket: &str,
    ) -> Result<(BucketState, Option<(HibernationRecord, u64)>)> {
        let b = bucket.to_owned();
        let (state, record) = self
            .core
            .local(move |s| {
                let view = s.read()?;
                let state = view.bucket(&b)?.state;
                Ok((state, view.get(SYS_BUCKET, &hibernation_key(&b), false)?))
            })
            .await?;
        let record = record
            .map(|r| HibernationRecord::decode(&r.value).map(|h| (h, r.rev)))
            .transpose()
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok((state, record))
    }

    /// Reserves `bucket` for a new operation of this leader.
    pub(super) fn reserve(&self, bucket: &str, kind: OpKind, term: u64) -> Result<Registration> {
        let mut running = lock(&self.state.running);
        if let Some(r) = running.get(bucket) {
            return Err(Error::Busy(format!(
                "a {} of bucket {bucket:?} is running: op {}",
                lock(&r.progress).kind.as_str(),
                r.op
            )));
        }
        let op = OpId {
            term,
            seq: self.state.seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        running.insert(
            bucket.to_owned(),
            Running {
                op,
                progress: Arc::new(Mutex::new(OpProgress {
                    op,
                    kind,
                    step: "starting".into(),
                    records: 0,
                    bytes: 0,
                    records_total: None,
                    bytes_total: None,
                })),
                task: None,
            },
        );
        Ok(Registration {
            state: Arc::downgrade(&self.state),
            bucket: bucket.to_owned(),
            op,
        })
    }

    pub(super) fn progress_of(&self, reg: &Registration) -> Arc<Mutex<OpProgress>> {
        let running = lock(&self.state.running);
        Arc::clone(&running.get(&reg.bucket).expect("reserved").progress)
    }

    /// Runs the rest of an operation as a task that ends when it does or when the driver
    /// aborts it.
    pub(super) fn spawn_op<F>(&self, reg: Registration, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let bucket = reg.bucket.clone();
        let task = tokio::spawn(async move {
            let _reg = reg;
            work.await;
        });
        if let Some(r) = lock(&self.state.running).get_mut(&bucket) {
            r.task = Some(task.abort_handle());
        }
    }
}
