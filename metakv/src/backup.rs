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
//! - A node keeps at most [`OPEN_MAX`] backups, at most [`USER_OPEN_MAX`] of them for one
//!   user; a backup is its user's alone (another user's chunk or end request finds none), and
//!   it is a lease: one not read for [`IDLE`] is removed by the next backup request, and a
//!   restart removes them all. A user holding its slots cannot lock another out for longer
//!   than that.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metakv_raft::StateMachine;
use metakv_store::Scope;

use crate::api::BackupInfo;
use crate::error::{Error, Result};
use crate::node_core::{Core, now_ms};

/// Where a node keeps the backups it holds, in its data dir.
pub(crate) const DIR: &str = "backups";
pub use crate::api::backup::CHUNK_BYTES;
/// Backups a node holds at once.
pub const OPEN_MAX: usize = 4;
/// Backups a node holds at once for one user.
pub const USER_OPEN_MAX: usize = 2;
/// A backup not read for this long is removed (a client reads a chunk every few
/// milliseconds while it pulls one).
pub const IDLE: Duration = Duration::from_secs(60);

/// The backups a node holds.
#[derive(Debug)]
pub(crate) struct Backups {
    dir: PathBuf,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Held>>,
}

#[derive(Debug)]
struct Held {
    /// The user it was taken for; `None` for a trusted caller (the embedded API).
    owner: Option<String>,
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
        crate::sync::lock(&self.open)
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

impl Held {
    /// Whether `user` (`None`: a trusted caller) may read or end it.
    fn readable_by(&self, user: Option<&str>) -> bool {
        user.is_none() || self.owner.as_deref() == user
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

impl Backups {
    /// Takes a backup of `core`'s copy (the caller has made it current) and holds it for
    /// `user` (`None`: a trusted caller).
    pub(crate) async fn begin(&self, core: &Core, user: Option<&str>) -> Result<BackupInfo> {
        let (backups, node) = (self, core.id);
        backups.sweep();
        // The slot is taken before the export, so concurrent requests cannot pass the limit.
        let (id, path) = {
            let mut open = backups.lock();
            if let Some(user) = user {
                let held = open.values().filter(|h| h.owner.as_deref() == Some(user));
                if held.count() >= USER_OPEN_MAX {
                    return Err(Error::Busy(format!(
                        "node {node} holds {USER_OPEN_MAX} backups for user {user:?} already; \
                         wait for one to end (one not read for {IDLE:?} ends by itself)"
                    )));
                }
            }
            if open.len() >= OPEN_MAX {
                return Err(Error::Busy(format!(
                    "node {node} holds {OPEN_MAX} backups already; wait for one to end (one \
                     not read for {IDLE:?} ends by itself)"
                )));
            }
            let id = backups.next.fetch_add(1, Ordering::Relaxed);
            let path = backups.dir.join(format!("{id}.mkva"));
            let held = Held {
                owner: user.map(str::to_owned),
                path: path.clone(),
                bytes: 0,
                touched: Instant::now(),
            };
            open.insert(id, held);
            (id, path)
        };
        let (dir, file) = (backups.dir.clone(), path);
        let taken = core
            .local(move |store| {
                let io = |e: std::io::Error| metakv_store::Error::Io {
                    doing: "writing a backup",
                    source: e,
                };
                metakv_store::private::create_dir_all(&dir).map_err(io)?;
                let view = store.read()?;
                let out = Summing {
                    out: BufWriter::new(metakv_store::private::create_file(&file).map_err(io)?),
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

    /// Up to [`CHUNK_BYTES`] of backup `id` from `offset`, for `user` (`None`: a trusted
    /// caller).
    pub(crate) async fn chunk(
        &self,
        core: &Core,
        id: u64,
        offset: u64,
        user: Option<&str>,
    ) -> Result<Vec<u8>> {
        let backups = self;
        backups.sweep();
        let (path, bytes) = {
            let mut open = backups.lock();
            let held = open
                .get_mut(&id)
                .filter(|h| h.readable_by(user))
                .ok_or_else(|| unknown(core.id, id))?;
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

    /// Removes backup `id`, for `user` (`None`: a trusted caller).
    pub(crate) fn end(&self, core: &Core, id: u64, user: Option<&str>) -> Result<()> {
        let readable = self.lock().get(&id).is_some_and(|h| h.readable_by(user));
        match readable.then(|| self.remove(id)).flatten() {
            Some(_) => Ok(()),
            None => Err(unknown(core.id, id)),
        }
    }
}
