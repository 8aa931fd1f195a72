//! The node's side of hibernation (see `metakv_gc::hibernate` for the protocol and its pure
//! parts). A pause or a resume runs as one task on the leader; every step is an
//! `Op::Hibernate` entry that expects the record of the step before. The driver aborts the
//! tasks when this node stops leading, and runs the janitor when it starts leading and on a
//! timer.
//!
//! Archives are reached through [`Archives`]: [`UriArchives`] opens a local directory
//! (`file:///dir` or a plain path) or, built with the `s3` feature, an S3-compatible store
//! (`s3://bucket/prefix`, configured from the usual `AWS_*` environment variables).

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
use crate::node::{DRIVER_TICK, Inner, Node, lock, next_tick, now_ms};

/// Bytes handed from the exporting thread to the uploader at a time.
const HANDOFF_BYTES: usize = 1 << 20;
/// `Restore` entries (archive chunks of up to 1 MiB) on their way through Raft at once: one
/// chunk is replicated while the one before is applied.
const RESTORES_IN_FLIGHT: usize = 4;
/// Size of each part of a multipart upload (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// Opens the object store an archive location names.
pub trait Archives: Send + Sync + std::fmt::Debug + 'static {
    /// The store and the path inside it that `uri` names. `create`: a pause writes there, so
    /// a missing local directory is made; a resume only reads.
    fn open(
        &self,
        uri: &str,
        create: bool,
    ) -> std::result::Result<(Arc<dyn ObjectStore>, ObjectPath), ArchiveError>;

    /// Makes the objects at `paths` (as `open` gave them) durable before a pause drops the
    /// data they hold. A store whose writes are durable when they complete (S3) has nothing
    /// to do.
    fn make_durable(
        &self,
        uri: &str,
        paths: &[ObjectPath],
    ) -> std::result::Result<(), ArchiveError>;
}

/// Why an archive location could not be opened or made durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("archive location {uri:?}: only file:// (or a plain path) and s3:// are supported")]
    Unsupported { uri: String },
    #[error("s3:// archives need metakv built with the `s3` feature")]
    S3NotBuilt,
    #[error("cannot create archive directory {}: {source}", dir.display())]
    CreateDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("archive {location} unreachable: {source}")]
    Unreachable {
        location: String,
        source: object_store::Error,
    },
    #[error("syncing {}: {source}", path.display())]
    Sync {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The local directory a `file://` or plain-path location names; `None` for other schemes.
fn local_dir(uri: &str) -> Option<std::path::PathBuf> {
    if uri.contains("://") && !uri.starts_with("file://") {
        return None;
    }
    Some(std::path::PathBuf::from(
        uri.strip_prefix("file://").unwrap_or(uri),
    ))
}

/// Archive locations as URIs: `file:///dir`, a plain path, or (feature `s3`) `s3://bucket/p`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UriArchives;

impl Archives for UriArchives {
    fn open(
        &self,
        uri: &str,
        create: bool,
    ) -> std::result::Result<(Arc<dyn ObjectStore>, ObjectPath), ArchiveError> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            return open_s3(rest);
        }
        let Some(dir) = local_dir(uri) else {
            return Err(ArchiveError::Unsupported {
                uri: uri.to_owned(),
            });
        };
        if create {
            std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::CreateDir {
                dir: dir.clone(),
                source,
            })?;
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
            ArchiveError::Unreachable {
                location: format!("directory {}", dir.display()),
                source,
            }
        })?;
        Ok((Arc::new(fs), ObjectPath::default()))
    }

    /// A local file and its directory are fsynced (the local store renames a finished object
    /// into place but does not sync it).
    fn make_durable(
        &self,
        uri: &str,
        paths: &[ObjectPath],
    ) -> std::result::Result<(), ArchiveError> {
        let Some(dir) = local_dir(uri) else {
            return Ok(());
        };
        for path in paths {
            let file = path.parts().fold(dir.clone(), |d, p| d.join(p.as_ref()));
            let sync = |p: &std::path::Path| {
                std::fs::File::open(p)
                    .and_then(|f| f.sync_all())
                    .map_err(|source| ArchiveError::Sync {
                        path: p.to_owned(),
                        source,
                    })
            };
            sync(&file)?;
            if let Some(parent) = file.parent() {
                sync(parent)?;
            }
        }
        Ok(())
    }
}

#[cfg(feature = "s3")]
fn open_s3(rest: &str) -> std::result::Result<(Arc<dyn ObjectStore>, ObjectPath), ArchiveError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|source| ArchiveError::Unreachable {
            location: format!("S3 bucket {bucket:?}"),
            source,
        })?;
    Ok((Arc::new(s3), ObjectPath::from(prefix)))
}

#[cfg(not(feature = "s3"))]
fn open_s3(_: &str) -> std::result::Result<(Arc<dyn ObjectStore>, ObjectPath), ArchiveError> {
    Err(ArchiveError::S3NotBuilt)
}

/// Hibernation settings; [`HibernationConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct HibernationConfig {
    /// The janitor runs this often on the leader (and whenever a node becomes leader); 0 runs
    /// it only on leadership changes.
    pub janitor_interval_ms: u64,
    /// Where archive locations lead.
    pub archives: Arc<dyn Archives>,
}

impl Default for HibernationConfig {
    fn default() -> Self {
        HibernationConfig {
            janitor_interval_ms: 60_000,
            archives: Arc::new(UriArchives),
        }
    }
}

#[derive(Debug)]
struct Running {
    op: OpId,
    progress: Arc<Mutex<OpProgress>>,
    task: Option<tokio::task::AbortHandle>,
}

/// The hibernation state every node keeps (used while it leads).
#[derive(Debug)]
pub(crate) struct HibernationState {
    config: HibernationConfig,
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

    fn progress(&self, bucket: &str) -> Option<OpProgress> {
        lock(&self.running)
            .get(bucket)
            .map(|r| lock(&r.progress).clone())
    }

    fn abort_all(&self, why: &str) {
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
struct Registration {
    node: Weak<Inner>,
    bucket: String,
    op: OpId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.node.upgrade() {
            let mut running = lock(&inner.hibernation.running);
            if running.get(&self.bucket).is_some_and(|r| r.op == self.op) {
                running.remove(&self.bucket);
            }
        }
    }
}

fn archive_err(e: impl std::fmt::Display) -> Error {
    Error::Archive(e.to_string())
}

fn objects(base: &ObjectPath, prefix: &str) -> (ObjectPath, ObjectPath, ObjectPath) {
    let dir = prefix
        .split('/')
        .fold(base.clone(), |p, part| p.clone().join(part));
    (
        dir.clone(),
        dir.clone().join(ARCHIVE_OBJECT),
        dir.join(MANIFEST_OBJECT),
    )
}

/// A `Write` for the exporting thread that hands its bytes to the async uploader.
struct Handoff {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl Handoff {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(HANDOFF_BYTES),
        ));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the archive upload stopped"))
    }
}

impl Write for Handoff {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HANDOFF_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// A `Read` for a blocking thread over an object's byte stream.
struct Download {
    rx: mpsc::Receiver<std::result::Result<Bytes, String>>,
    cur: Bytes,
}

impl Read for Download {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Streams `path` into a [`Download`] for a blocking reader.
async fn download(store: Arc<dyn ObjectStore>, path: ObjectPath) -> Result<Download> {
    let got = store
        .get(&path)
        .await
        .map_err(|e| archive_err(format!("reading {path}: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut stream = got.into_stream();
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| format!("reading {path}: {e}"));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    Ok(Download {
        rx,
        cur: Bytes::new(),
    })
}

/// Reads an archive to its end on a blocking thread: every frame's crc, every chunk against
/// the manifest, and the end. `each` sees every chunk's records (a resume proposes them).
async fn read_archive(
    download: Download,
    bucket: String,
    manifest: Manifest,
    each: mpsc::Sender<Vec<(Vec<u8>, metakv_store::Record)>>,
    progress: Arc<Mutex<OpProgress>>,
) -> Result<()> {
    let name = bucket.clone();
    tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
        let mut reader =
            ArchiveReader::open(std::io::BufReader::new(download)).map_err(|e| e.to_string())?;
        if *reader.scope() != Scope::Bucket(bucket.clone()) {
            return Err(format!("not an archive of bucket {bucket:?}"));
        }
        let rev = reader.rev();
        let (mut chunks, mut records) = (0usize, 0u64);
        while let Some(frame) = reader.next().map_err(|e| e.to_string())? {
            let Frame::Records { records: rs, .. } = frame else {
                continue;
            };
            let (crc32, bytes) = reader.last_frame();
            let n = rs.len() as u64;
            manifest
                .check_chunk(
                    chunks,
                    ChunkEntry {
                        records: n,
                        bytes,
                        crc32,
                    },
                )
                .map_err(|e| e.to_string())?;
            chunks += 1;
            records += n;
            {
                let mut p = lock(&progress);
                p.records += n;
                p.bytes += bytes;
            }
            if each.blocking_send(rs).is_err() {
                return Err("stopped".to_owned());
            }
        }
        manifest
            .check_end(rev, chunks, records)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| Error::Storage(format!("archive reader: {e}")))?
    .map_err(|e| archive_err(format!("the archive of bucket {name:?}: {e}")))
}

/// Free bytes on the file system that holds `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

impl Node {
    /// This node's term if it leads; `NotLeader` otherwise.
    fn leading_term(&self) -> Result<u64> {
        self.leading().map_err(Error::from)
    }

    /// Proposes a hibernation step; `Ok(rev)` of the new record, or `Busy` when the record
    /// moved on (the step belongs to an operation that was replaced or rolled back).
    async fn step(
        &self,
        bucket: &str,
        state: BucketState,
        drop_data: bool,
        record: &HibernationRecord,
        expect: Expect,
    ) -> Result<u64> {
        match self
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
    async fn hibernation_of(
        &self,
        bucket: &str,
    ) -> Result<(BucketState, Option<(HibernationRecord, u64)>)> {
        let b = bucket.to_owned();
        let (state, record) = self
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
    fn reserve(&self, bucket: &str, kind: OpKind, term: u64) -> Result<Registration> {
        let mut running = lock(&self.inner.hibernation.running);
        if let Some(r) = running.get(bucket) {
            return Err(Error::Busy(format!(
                "a {} of bucket {bucket:?} is running: op {}",
                lock(&r.progress).kind.as_str(),
                r.op
            )));
        }
        let op = OpId {
            term,
            seq: self.inner.hibernation.seq.fetch_add(1, Ordering::Relaxed) + 1,
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
            node: Arc::downgrade(&self.inner),
            bucket: bucket.to_owned(),
            op,
        })
    }

    fn progress_of(&self, reg: &Registration) -> Arc<Mutex<OpProgress>> {
        let running = lock(&self.inner.hibernation.running);
        Arc::clone(&running.get(&reg.bucket).expect("reserved").progress)
    }

    /// Runs the rest of an operation as a task that ends when it does or when the driver
    /// aborts it.
    fn spawn_op<F>(&self, reg: Registration, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let bucket = reg.bucket.clone();
        let task = tokio::spawn(async move {
            let _reg = reg;
            work.await;
        });
        if let Some(r) = lock(&self.inner.hibernation.running).get_mut(&bucket) {
            r.task = Some(task.abort_handle());
        }
    }

    /// Starts pausing `bucket` to the archive location `archive`, on the leader: the bucket
    /// is `Pausing` (writes answer `BucketPaused`) when this returns the operation's id.
    pub(crate) async fn start_pause(&self, bucket: &str, archive: &str) -> Result<OpId> {
        let term = self.leading_term()?;
        self.linearize(crate::api::Consistency::Linearizable)
            .await
            .map_err(|_| Error::NotLeader { leader: None })?;
        let reg = self.reserve(bucket, OpKind::Pause, term)?;
        let (state, record) = self.hibernation_of(bucket).await?;
        if state != BucketState::Active {
            return Err(bucket_state_err(bucket, state, "active"));
        }
        let (store, base) = self
            .inner
            .hibernation
            .config
            .archives
            .open(archive, true)
            .map_err(archive_err)?;
        let op = reg.op;
        let started = HibernationRecord::pause(op, bucket, archive, now_ms());
        let expect = record.map_or(Expect::Absent, |(_, rev)| Expect::Rev(rev));
        let rev = self
            .step(bucket, BucketState::Pausing, false, &started, expect)
            .await?;
        tracing::info!(%bucket, %op, %archive, "pause started");
        let progress = self.progress_of(&reg);
        let node = self.clone();
        let b = bucket.to_owned();
        self.spawn_op(reg, async move {
            let outcome = node
                .pause_steps(&b, &store, &base, &started, rev, &progress)
                .await;
            node.end_op(&b, &started, rev, outcome).await;
        });
        Ok(op)
    }

    /// Export, manifest, read back and verify, drop: `Ok(manifest)` once the bucket is
    /// `Paused`.
    async fn pause_steps(
        &self,
        bucket: &str,
        store: &Arc<dyn ObjectStore>,
        base: &ObjectPath,
        record: &HibernationRecord,
        rev: u64,
        progress: &Arc<Mutex<OpProgress>>,
    ) -> Result<()> {
        let (_, archive_path, manifest_path) = objects(base, &record.objects);
        // Export this node's copy (it applied `Pausing`; nothing can write the bucket now)
        // while uploading it.
        lock(progress).step = "exporting".into();
        let upload = store
            .put_multipart(&archive_path)
            .await
            .map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let scope = Scope::Bucket(bucket.to_owned());
        let p = Arc::clone(progress);
        let export = self.local(move |s| {
            let out = Handoff {
                tx,
                buf: Vec::with_capacity(HANDOFF_BYTES),
            };
            s.read()?
                .export(scope, out, |c| {
                    let mut p = lock(&p);
                    p.records += c.records;
                    p.bytes += c.bytes;
                })
                .map(|(summary, _)| summary)
        });
        let upload = async {
            while let Some(chunk) = rx.recv().await {
                writer.wait_for_capacity(2).await?;
                writer.put(chunk);
            }
            Ok::<_, object_store::Error>(writer)
        };
        let (summary, writer) = tokio::join!(export, upload);
        let writer = writer.map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        writer
            .finish()
            .await
            .map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            archive_format: ARCHIVE_FORMAT,
            bucket: bucket.to_owned(),
            op: record.op,
            rev: summary.rev,
            records: summary.records,
            bytes: summary.bytes,
            chunks: summary
                .chunks
                .iter()
                .map(|c| ChunkEntry {
                    records: c.records,
                    bytes: c.bytes,
                    crc32: c.crc32,
                })
                .collect(),
        };
        store
            .put(&manifest_path, manifest.to_json().into())
            .await
            .map_err(|e| archive_err(format!("writing {manifest_path}: {e}")))?;

        // Read both back: the archive must be what the manifest says, the manifest what was
        // written. Only then does the data go.
        {
            let mut p = lock(progress);
            p.step = "verifying".into();
            (p.records, p.bytes) = (0, 0);
            p.records_total = Some(manifest.records);
            p.bytes_total = Some(manifest.bytes);
        }
        let (each, mut sink) = mpsc::channel(2);
        let drain = async { while sink.recv().await.is_some() {} };
        let (checked, ()) = tokio::join!(
            read_archive(
                download(Arc::clone(store), archive_path.clone()).await?,
                bucket.to_owned(),
                manifest.clone(),
                each,
                Arc::clone(progress),
            ),
            drain
        );
        checked?;
        let read = self.read_manifest(store, &manifest_path, bucket).await?;
        if read != manifest {
            return Err(archive_err(format!(
                "{manifest_path} read back differs from what was written"
            )));
        }

        self.inner
            .hibernation
            .config
            .archives
            .make_durable(
                &record.archive,
                &[archive_path.clone(), manifest_path.clone()],
            )
            .map_err(archive_err)?;

        lock(progress).step = "dropping".into();
        self.step(
            bucket,
            BucketState::Paused,
            true,
            &record.done(Some(manifest), now_ms()),
            Expect::Rev(rev),
        )
        .await?;
        Ok(())
    }

    async fn read_manifest(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &ObjectPath,
        bucket: &str,
    ) -> Result<Manifest> {
        let bytes = store
            .get(path)
            .await
            .map_err(|e| archive_err(format!("reading {path}: {e}")))?
            .bytes()
            .await
            .map_err(|e| archive_err(format!("reading {path}: {e}")))?;
        Manifest::from_json(&bytes, bucket, ARCHIVE_FORMAT)
            .map_err(|e| archive_err(format!("{path}: {e}")))
    }

    /// Starts resuming a paused `bucket` from its archive (or from `archive`, where its
    /// objects were moved), on the leader. Everything that can be checked before the bucket
    /// changes state is: the manifest is read, checked against the bucket's record, and the
    /// archive's size against it, and the data directory must have room.
    pub(crate) async fn start_resume(&self, bucket: &str, archive: Option<&str>) -> Result<OpId> {
        let term = self.leading_term()?;
        self.linearize(crate::api::Consistency::Linearizable)
            .await
            .map_err(|_| Error::NotLeader { leader: None })?;
        let reg = self.reserve(bucket, OpKind::Resume, term)?;
        let (state, record) = self.hibernation_of(bucket).await?;
        if state != BucketState::Paused {
            return Err(bucket_state_err(bucket, state, "paused"));
        }
        let Some((paused, rev)) = record else {
            return Err(archive_err(format!(
                "bucket {bucket:?} is paused but has no hibernation record"
            )));
        };
        let Some(manifest) = paused.manifest.clone() else {
            return Err(archive_err(format!(
                "bucket {bucket:?} has no verified archive to resume from"
            )));
        };
        let location = archive.unwrap_or(&paused.archive);
        let (store, base) = self
            .inner
            .hibernation
            .config
            .archives
            .open(location, false)
            .map_err(archive_err)?;
        let (_, archive_path, manifest_path) = objects(&base, &paused.objects);
        let read = self.read_manifest(&store, &manifest_path, bucket).await?;
        if read != manifest {
            return Err(archive_err(format!(
                "{manifest_path} does not match the manifest recorded when bucket {bucket:?} was paused"
            )));
        }
        let size = store
            .head(&archive_path)
            .await
            .map_err(|e| archive_err(format!("{archive_path}: {e}")))?
            .size;
        if size != manifest.bytes {
            return Err(archive_err(format!(
                "{archive_path} holds {size} bytes; its manifest says {}",
                manifest.bytes
            )));
        }
        // A restored record takes about twice its archived size in the store (its row and
        // its change entry), plus room for the B-trees to grow.
        let need = manifest.bytes.saturating_mul(3);
        if let Some(free) = free_bytes(&self.inner.config.data_dir)
            && free < need
        {
            return Err(archive_err(format!(
                "not enough space: restoring {} bytes of archive needs about {need} bytes free in the data directory, {free} are",
                manifest.bytes
            )));
        }
        let op = reg.op;
        let started = paused.resume(op, archive, now_ms());
        let rev = self
            .step(
                bucket,
                BucketState::Resuming,
                false,
                &started,
                Expect::Rev(rev),
            )
            .await?;
        tracing::info!(%bucket, %op, archive = %started.archive, "resume started");
        let progress = self.progress_of(&reg);
        {
            let mut p = lock(&progress);
            p.records_total = Some(manifest.records);
            p.bytes_total = Some(manifest.bytes);
        }
        let node = self.clone();
        let b = bucket.to_owned();
        self.spawn_op(reg, async move {
            let outcome = node
                .resume_steps(&b, &store, archive_path, &started, rev, manifest, &progress)
                .await;
            node.end_op(&b, &started, rev, outcome).await;
        });
        Ok(op)
    }

    /// Streams the archive, checks every chunk, restores it through Raft, then `Active`.
    #[allow(clippy::too_many_arguments)]
    async fn resume_steps(
        &self,
        bucket: &str,
        store: &Arc<dyn ObjectStore>,
        archive_path: ObjectPath,
        record: &HibernationRecord,
        rev: u64,
        manifest: Manifest,
        progress: &Arc<Mutex<OpProgress>>,
    ) -> Result<()> {
        lock(progress).step = "restoring".into();
        let (each, chunks) = mpsc::channel(RESTORES_IN_FLIGHT);
        let restore = async {
            let chunks = futures_util::stream::unfold(chunks, |mut rx| async {
                rx.recv().await.map(|records| (records, rx))
            });
            let mut applied = std::pin::pin!(
                chunks
                    .map(|records| {
                        // As long as Raft takes: a chunk is never left half-known.
                        self.propose_here(
                            Op::Restore {
                                bucket: bucket.to_owned(),
                                records,
                            },
                            None,
                        )
                    })
                    .buffered(RESTORES_IN_FLIGHT)
            );
            while let Some(done) = applied.next().await {
                // On an error the stream, and with it the channel, is dropped: the reader stops.
                done?;
            }
            Ok::<(), Error>(())
        };
        let (read, restored) = tokio::join!(
            read_archive(
                download(Arc::clone(store), archive_path).await?,
                bucket.to_owned(),
                manifest,
                each,
                Arc::clone(progress),
            ),
            restore
        );
        restored?;
        read?;
        lock(progress).step = "finishing".into();
        self.step(
            bucket,
            BucketState::Active,
            false,
            &record.done(None, now_ms()),
            Expect::Rev(rev),
        )
        .await?;
        Ok(())
    }

    /// Records how an operation ended; on failure, rolls it back (a pause deletes its
    /// objects; a resume drops what it restored).
    async fn end_op(
        &self,
        bucket: &str,
        record: &HibernationRecord,
        rev: u64,
        outcome: Result<()>,
    ) {
        let op = record.op;
        let error = match outcome {
            Ok(()) => {
                tracing::info!(%bucket, %op, kind = record.kind.as_str(), "done");
                return;
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(%bucket, %op, kind = record.kind.as_str(), %error, "failed; rolling back");
        // The same repair the janitor makes of an interrupted operation; if it does not land,
        // the janitor of this or the next leader finds the operation still running and retries.
        self.repair(metakv_gc::hibernate::rollback(
            bucket,
            record,
            rev,
            &error,
            now_ms(),
        ))
        .await;
    }

    /// What `bucket status` shows, from the leader.
    pub(crate) async fn hibernation_status(&self, bucket: &str) -> Result<HibernationStatus> {
        let (state, record) = self.hibernation_of(bucket).await?;
        Ok(HibernationStatus {
            bucket: bucket.to_owned(),
            state,
            record: record.map(|(r, _)| r),
            running: self.inner.hibernation.progress(bucket),
        })
    }

    /// The janitor: looks at every bucket not in `Active` and repairs what no operation of
    /// this leader is running on.
    async fn run_janitor(&self) -> Result<()> {
        self.linearize(crate::api::Consistency::Linearizable)
            .await
            .map_err(|_| Error::NotLeader { leader: None })?;
        let scan = Scan {
            limit: metakv_store::PAGE_ITEMS_MAX,
            ..Scan::prefix(HIBERNATION_KEY_PREFIX)
        };
        let (buckets, records) = self
            .local(move |s| {
                let view = s.read()?;
                let mut records = Vec::new();
                let mut scan = scan;
                loop {
                    let page = view.scan(SYS_BUCKET, &scan)?;
                    records.extend(page.items);
                    match page.next {
                        Some(next) => scan.after = Some(next),
                        None => break,
                    }
                }
                Ok((view.buckets()?, records))
            })
            .await?;
        let mut by_bucket = BTreeMap::new();
        for (key, r) in records {
            let name = String::from_utf8_lossy(&key[HIBERNATION_KEY_PREFIX.len()..]).into_owned();
            match HibernationRecord::decode(&r.value) {
                Ok(h) => {
                    by_bucket.insert(name, (h, r.rev));
                }
                Err(e) => {
                    tracing::error!(bucket = %name, error = %e, "hibernation record unreadable")
                }
            }
        }
        let running: Vec<String> = lock(&self.inner.hibernation.running)
            .keys()
            .cloned()
            .collect();
        let seen: Vec<Seen> = buckets
            .into_iter()
            .filter(|(name, info)| name != SYS_BUCKET && info.state != BucketState::Active)
            .map(|(name, info)| Seen {
                running: running.contains(&name),
                record: by_bucket.remove(&name),
                state: info.state,
                bucket: name,
            })
            .collect();
        for repair in janitor(&seen, now_ms()) {
            self.repair(repair).await;
        }
        Ok(())
    }

    async fn repair(&self, repair: Repair) {
        let archives = &self.inner.hibernation.config.archives;
        match repair {
            Repair::RollBackPause {
                bucket,
                archive,
                objects,
                record,
                expect,
            } => {
                if let Ok((store, base)) = archives.open(&archive, false) {
                    delete_objects(&store, &base, &objects).await;
                }
                let done = self
                    .step(
                        &bucket,
                        BucketState::Active,
                        false,
                        &record,
                        Expect::Rev(expect),
                    )
                    .await;
                tracing::warn!(%bucket, op = %record.op, reason = record.error.as_deref().unwrap_or(""), outcome = ?done.map(|_| ()), "pause rolled back");
            }
            Repair::RollBackResume {
                bucket,
                record,
                expect,
            } => {
                let done = self
                    .step(
                        &bucket,
                        BucketState::Paused,
                        true,
                        &record,
                        Expect::Rev(expect),
                    )
                    .await;
                tracing::warn!(%bucket, op = %record.op, reason = record.error.as_deref().unwrap_or(""), outcome = ?done.map(|_| ()), "resume rolled back");
            }
            Repair::CheckArchive {
                bucket,
                record,
                expect,
            } => {
                let missing = match archives.open(&record.archive, false) {
                    Err(e) => Some(e.to_string()),
                    Ok((store, base)) => {
                        let (_, archive_path, manifest_path) = objects(&base, &record.objects);
                        let mut missing = None;
                        for path in [manifest_path, archive_path] {
                            if let Err(e) = store.head(&path).await {
                                missing = Some(format!("{path}: {e}"));
                                break;
                            }
                        }
                        missing
                    }
                };
                let Some(why) = missing else { return };
                let error = format!("archive missing: {why}");
                tracing::error!(%bucket, archive = %record.archive, %error, "a paused bucket's archive is missing; the bucket stays paused and nothing is dropped");
                if record.error.as_deref() != Some(error.as_str()) {
                    let noted = HibernationRecord {
                        error: Some(error),
                        ..record
                    };
                    let _ = self
                        .step(
                            &bucket,
                            BucketState::Paused,
                            false,
                            &noted,
                            Expect::Rev(expect),
                        )
                        .await;
                }
            }
            Repair::Report { bucket, problem } => {
                tracing::error!(%bucket, %problem, "hibernation: the janitor cannot repair this bucket");
            }
        }
    }
}

fn bucket_state_err(bucket: &str, state: BucketState, needed: &str) -> Error {
    Error::Rejected(metakv_raft::Rejection {
        kind: metakv_raft::RejectionKind::BucketState,
        message: format!("bucket {bucket:?} is {state}; this needs it {needed}"),
    })
}

/// Deletes every object under an operation's prefix (a partial or rolled-back archive).
async fn delete_objects(store: &Arc<dyn ObjectStore>, base: &ObjectPath, prefix: &str) {
    let (dir, ..) = objects(base, prefix);
    let mut listed = store.list(Some(&dir));
    while let Some(item) = listed.next().await {
        match item {
            Ok(meta) => {
                if let Err(e) = store.delete(&meta.location).await {
                    tracing::warn!(object = %meta.location, error = %e, "could not delete");
                }
            }
            Err(e) => {
                tracing::warn!(prefix = %dir, error = %e, "could not list");
                break;
            }
        }
    }
}

/// Runs on every node until `stop`: aborts the operations of a leadership this node lost,
/// and runs the janitor when it starts leading and every `janitor_interval_ms` while it leads.
pub(crate) async fn drive(node: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let Some(first) = node.upgrade() else { return };
    let interval = first.hibernation.config.janitor_interval_ms;
    drop(first);
    let mut tick = tokio::time::interval(DRIVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led: Option<u64> = None;
    let mut last_janitor = tokio::time::Instant::now();
    // Whether the janitor must run on the next tick: a new leadership, or a run that failed.
    let mut janitor_due = false;
    while let Some(node) = next_tick(&node, &mut tick, &mut stop).await {
        let term = node.leading_term().ok();
        if term != led {
            if led.is_some() {
                node.inner
                    .hibernation
                    .abort_all("this node no longer leads");
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
    if let Some(inner) = node.upgrade() {
        inner.hibernation.abort_all("the node stops");
    }
}
