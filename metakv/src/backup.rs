//! Backups: a consistent copy of the whole store, taken on the leader, pulled in chunks by the
//! client, and checked before it is kept.
//!
//! ```text
//!  client ──BackupBegin──> any node ──(forwarded)──> leader: read index, then export the
//!         <──── BackupInfo { node, id, bytes, crc32, rev, applied } ──┘  store to <data>/backups/
//!         ──BackupChunk { node, id, offset }──> any node ──> node `node`: up to 1 MiB at offset
//!         ──BackupEnd { node, id }──────────> any node ──> node `node`: the file is removed
//! ```
//!
//! - The export is a `Scope::Store` archive of one read view with the store's meta: the format
//!   of a Raft snapshot, taken at a log index at or after every write acknowledged before the
//!   backup began (the leader's read index). `metakv restore` turns it into a new node's files
//!   (`metakv_raft::restore`).
//! - The client writes `FILE.partial`, checks the whole file's size and crc32 against the
//!   node's, reads the archive to its `End` frame (every frame's crc, the counts), fsyncs it,
//!   and only then renames it to `FILE`. A failed backup leaves no `FILE`.
//! - A node keeps at most [`OPEN_MAX`] backups; one not read for [`IDLE`] is removed by the
//!   next backup request, and a restart removes them all.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metakv_raft::StateMachine;
use metakv_store::Scope;
use metakv_store::archive::ArchiveReader;

use crate::api::BackupInfo;
use crate::api::{ClientReply, ClientRequest, Kv};
use crate::error::{Error, Result};
use crate::node::{Node, now_ms};

/// Where a node keeps the backups it holds, in its data dir.
pub(crate) const DIR: &str = "backups";
/// Bytes per `BackupChunk` reply.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Backups a node holds at once.
pub const OPEN_MAX: usize = 4;
/// A backup not read for this long is removed.
pub const IDLE: Duration = Duration::from_secs(600);

/// The backups a node holds.
#[derive(Debug)]
pub(crate) struct Backups {
    dir: PathBuf,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Held>>,
}

#[derive(Debug)]
struct Held {
    path: PathBuf,
    bytes: u64,
    touched: Instant,
}

impl Backups {
    /// The backups kept in `dir`; whatever an earlier run left there is removed.
    pub(crate) fn new(dir: PathBuf) -> Backups {
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove old backups");
        }
        Backups {
            dir,
            // Ids start at the clock, so an id from before a restart names nothing after it.
            next: AtomicU64::new(now_ms()),
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Held>> {
        crate::node::lock(&self.open)
    }

    /// Removes the backups idle for longer than [`IDLE`].
    fn sweep(&self) {
        self.lock().retain(|id, held| {
            let keep = held.touched.elapsed() < IDLE;
            if !keep {
                tracing::info!(backup = id, "removing a backup nobody read for {IDLE:?}");
                std::fs::remove_file(&held.path).ok();
            }
            keep
        });
    }

    fn remove(&self, id: u64) -> Option<Held> {
        let held = self.lock().remove(&id)?;
        std::fs::remove_file(&held.path).ok();
        Some(held)
    }
}

fn unknown(node: u64, id: u64) -> Error {
    Error::invalid(format!(
        "node {node} holds no backup {id} (it ended, was idle for over {IDLE:?}, or the node \
         restarted); start the backup again"
    ))
}

/// A writer that counts and checksums what goes through it.
struct Summing<W> {
    out: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Node {
    /// Takes a backup of this node's copy (the caller has made it current) and holds it.
    pub(crate) async fn backup_begin(&self) -> Result<BackupInfo> {
        let (backups, node) = (&self.inner.backups, self.inner.id);
        backups.sweep();
        // The slot is taken before the export, so concurrent requests cannot pass the limit.
        let (id, path) = {
            let mut open = backups.lock();
            if open.len() >= OPEN_MAX {
                return Err(Error::Busy(format!(
                    "node {node} holds {OPEN_MAX} backups already; wait for one to end"
                )));
            }
            let id = backups.next.fetch_add(1, Ordering::Relaxed);
            let path = backups.dir.join(format!("{id}.mkva"));
            let held = Held {
                path: path.clone(),
                bytes: 0,
                touched: Instant::now(),
            };
            open.insert(id, held);
            (id, path)
        };
        let (dir, file) = (backups.dir.clone(), path);
        let taken = self
            .local(move |store| {
                let io = |e: std::io::Error| metakv_store::Error::Io {
                    doing: "writing a backup",
                    source: e,
                };
                std::fs::create_dir_all(&dir).map_err(io)?;
                let view = store.read()?;
                let out = Summing {
                    out: BufWriter::new(File::create(&file).map_err(io)?),
                    crc: crc32fast::Hasher::new(),
                    bytes: 0,
                };
                let (summary, out) = view.export(Scope::Store, out, |_| {})?;
                let (applied, _) = StateMachine::applied(&view).map_err(io)?;
                let (bytes, crc) = (out.bytes, out.crc.finalize());
                out.out
                    .into_inner()
                    .map_err(|e| io(e.into_error()))?
                    .sync_all()
                    .map_err(io)?;
                Ok((summary, applied, bytes, crc))
            })
            .await;
        let (summary, applied, bytes, crc32) = match taken {
            Ok(t) => t,
            Err(e) => {
                backups.remove(id);
                return Err(e);
            }
        };
        let applied = applied.map_or(0, |l| l.index);
        match backups.lock().get_mut(&id) {
            Some(held) => {
                held.bytes = bytes;
                held.touched = Instant::now();
            }
            // Swept while it was being written (an export longer than `IDLE`).
            None => return Err(unknown(node, id)),
        }
        tracing::info!(
            backup = id,
            bytes,
            records = summary.records,
            applied,
            "backup taken"
        );
        Ok(BackupInfo {
            node,
            id,
            bytes,
            crc32,
            rev: summary.rev,
            applied,
            buckets: summary.buckets,
            records: summary.records,
        })
    }

    /// Up to [`CHUNK_BYTES`] of backup `id` from `offset`.
    pub(crate) async fn backup_chunk(&self, id: u64, offset: u64) -> Result<Vec<u8>> {
        let backups = &self.inner.backups;
        backups.sweep();
        let (path, bytes) = {
            let mut open = backups.lock();
            let held = open
                .get_mut(&id)
                .ok_or_else(|| unknown(self.inner.id, id))?;
            held.touched = Instant::now();
            (held.path.clone(), held.bytes)
        };
        if offset > bytes {
            return Err(Error::invalid(format!(
                "offset {offset} is past the end of backup {id} ({bytes} bytes)"
            )));
        }
        let len = (bytes - offset).min(CHUNK_BYTES) as usize;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            File::open(&path)?.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
        .map_err(|e| Error::Storage(format!("reading a backup: {e}")))?
        .map_err(|e: std::io::Error| Error::Storage(format!("reading backup {id}: {e}")))
    }

    /// Removes backup `id`.
    pub(crate) fn backup_end(&self, id: u64) -> Result<()> {
        match self.inner.backups.remove(id) {
            Some(_) => Ok(()),
            None => Err(unknown(self.inner.id, id)),
        }
    }
}

/// The client's half: everything a caller of [`Kv`] needs for a backup.
pub(crate) async fn begin(kv: &impl Kv) -> Result<BackupInfo> {
    match kv.request(ClientRequest::BackupBegin).await? {
        ClientReply::Backup(info) => Ok(info),
        other => crate::api::unexpected(other),
    }
}

/// Pulls backup `info` into `path` (through `path.partial`), checks it whole, makes it durable,
/// and tells the node it may drop its copy (if the node cannot be told, the backup is still
/// whole; the node drops its copy once it has been idle for [`IDLE`]). `on_bytes` sees the
/// bytes pulled so far.
pub(crate) async fn pull(
    kv: &impl Kv,
    info: &BackupInfo,
    path: &Path,
    mut on_bytes: impl FnMut(u64),
) -> Result<()> {
    let io =
        |doing: &str, e: std::io::Error| Error::Archive(format!("{doing} {}: {e}", path.display()));
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let outcome = async {
        let mut out = BufWriter::new(File::create(&partial).map_err(|e| io("creating", e))?);
        let mut crc = crc32fast::Hasher::new();
        let mut offset = 0;
        while offset < info.bytes {
            let request = ClientRequest::BackupChunk {
                node: info.node,
                id: info.id,
                offset,
            };
            let chunk = match kv.request(request).await? {
                ClientReply::Bytes(b) => b,
                other => return crate::api::unexpected(other),
            };
            if chunk.is_empty() {
                return Err(Error::Protocol(format!(
                    "backup {} ended at {offset} of {} bytes",
                    info.id, info.bytes
                )));
            }
            crc.update(&chunk);
            out.write_all(&chunk).map_err(|e| io("writing", e))?;
            offset += chunk.len() as u64;
            on_bytes(offset);
        }
        let file = out
            .into_inner()
            .map_err(|e| io("writing", e.into_error()))?;
        let crc = crc.finalize();
        if (offset, crc) != (info.bytes, info.crc32) {
            return Err(Error::Archive(format!(
                "backup {} arrived as {offset} bytes with crc {crc:08x}; node {} sent {} bytes \
                 with crc {:08x}",
                info.id, info.node, info.bytes, info.crc32
            )));
        }
        verify(&partial, info)?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        std::fs::remove_file(&partial).ok();
        end(kv, info).await.ok();
        return Err(e);
    }
    std::fs::rename(&partial, path).map_err(|e| io("renaming to", e))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory of", e))?;
    }
    if let Err(e) = end(kv, info).await {
        tracing::warn!(backup = info.id, node = info.node, error = %e, "cannot release the node's copy of a finished backup");
    }
    Ok(())
}

async fn end(kv: &impl Kv, info: &BackupInfo) -> Result<()> {
    match kv
        .request(ClientRequest::BackupEnd {
            node: info.node,
            id: info.id,
        })
        .await?
    {
        ClientReply::Done => Ok(()),
        other => crate::api::unexpected(other),
    }
}

/// Reads the backup at `path` to its end: a `Scope::Store` archive, every frame's crc, the
/// `End` counts, and the revision, counts and log index `info` promises.
fn verify(path: &Path, info: &BackupInfo) -> Result<()> {
    let summary = check_file(path)?;
    let found = (
        summary.rev,
        summary.applied,
        summary.buckets,
        summary.records,
    );
    let said = (info.rev, info.applied, info.buckets, info.records);
    if found != said {
        return Err(Error::Archive(format!(
            "{} holds (rev, log index, buckets, records) {found:?}; the node said {said:?}",
            path.display()
        )));
    }
    Ok(())
}

/// What a backup file holds, read and checked to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackupSummary {
    pub rev: u64,
    /// The Raft log index it was taken at (0: the node had applied nothing).
    pub applied: u64,
    pub buckets: u64,
    pub records: u64,
}

/// Reads a backup file to its end and checks it: a whole-store archive, every frame's crc, its
/// `End` counts.
pub(crate) fn check_file(path: &Path) -> Result<BackupSummary> {
    check(
        File::open(path)
            .map_err(|e| Error::Archive(format!("cannot open {}: {e}", path.display())))?,
    )
    .map_err(|e| Error::Archive(format!("{}: {e}", path.display())))
}

/// The same, of any reader.
pub(crate) fn check(input: impl Read) -> std::result::Result<BackupSummary, String> {
    let mut reader = ArchiveReader::open(BufReader::new(input)).map_err(|e| e.to_string())?;
    if reader.scope() != &Scope::Store {
        return Err("a bucket's archive, not a backup of the whole store".into());
    }
    let applied = StateMachine::applied_in(reader.meta())
        .map_err(|e| e.to_string())?
        .0
        .map_or(0, |l| l.index);
    let (mut buckets, mut records) = (0, 0);
    while let Some(frame) = reader.next().map_err(|e| e.to_string())? {
        match frame {
            metakv_store::archive::Frame::Bucket { .. } => buckets += 1,
            metakv_store::archive::Frame::Records { records: r, .. } => records += r.len() as u64,
            _ => {}
        }
    }
    Ok(BackupSummary {
        rev: reader.rev(),
        applied,
        buckets,
        records,
    })
}
