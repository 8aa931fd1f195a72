//! The state machine: metakv-store driven by the Raft log.
//!
//! - A batch of entries is applied in one store write transaction, together with the last
//!   applied log id and membership (`raft.applied`, `raft.membership` in the store's meta),
//!   so `applied_state` always describes exactly the data on disk.
//! - The store commits without fsync: every applied entry is durable in the log already, and
//!   after a crash openraft re-applies from the store's `raft.applied`. The one thing that
//!   would break this, purging log entries the store has not made durable, cannot happen:
//!   a snapshot (after which openraft purges) begins with `Store::sync`.
//! - A rejected op is answered as `Response::Rejected` and the batch goes on; a storage failure
//!   fails the whole batch and stops the node.
//! - Snapshots are files in the archive format (`snapshots/` in the data dir), streamed as
//!   they are, with a sidecar `current.meta` naming the current one.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::{Stream, TryStreamExt};
use metakv_store::archive::ArchiveReader;
use metakv_store::{Applied, ReadView, Scope, Stamp, Store, codec};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::blocking::blocking;
use crate::types::{LogId, Rejection, Response, SnapshotMeta, StoredMembership, TypeConfig};

/// The store, shared by the state machine, the snapshot builder and readers. The write lock
/// is taken only to take the store out of service (compaction).
pub type SharedStore = Arc<RwLock<Store>>;

/// Store meta names the Raft layer keeps.
pub const META_APPLIED: &str = "raft.applied";
pub const META_MEMBERSHIP: &str = "raft.membership";
pub(crate) const META_FORMAT: u8 = 1;
const CURRENT: &str = "current.meta";

/// A snapshot as a file: opened once, so replacing the current snapshot while this one is
/// still being sent does not disturb it.
#[derive(Debug)]
pub struct SnapshotFile {
    pub file: File,
    pub len: u64,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> io::Result<SnapshotFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SnapshotFile { file, len })
    }
}

/// The sidecar that names the current snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Current {
    meta: SnapshotMeta,
    file: String,
}

#[derive(Debug, Clone)]
pub struct StateMachine {
    store: SharedStore,
    dir: PathBuf,
    /// Counts applied batches and installed snapshots that changed `_sys` (see
    /// [`StateMachine::sys_changes`]).
    sys_changes: Arc<std::sync::atomic::AtomicU64>,
}

/// Whether `op` writes into `_sys`.
fn writes_sys(op: &metakv_store::Op) -> bool {
    use metakv_store::{Op, SYS_BUCKET};
    match op {
        Op::Put { bucket, .. } | Op::Delete { bucket, .. } => bucket == SYS_BUCKET,
        Op::Purge { items } => items.iter().any(|i| i.bucket == SYS_BUCKET),
        _ => false,
    }
}

fn other(doing: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("state machine: {doing}: {e}"))
}

fn read_store(store: &SharedStore) -> std::sync::RwLockReadGuard<'_, Store> {
    store
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StateMachine {
    /// A state machine over `store`, keeping snapshots in `dir` (created if missing).
    pub fn new(store: SharedStore, dir: PathBuf) -> io::Result<StateMachine> {
        metakv_store::private::create_dir_all(&dir)?;
        Ok(StateMachine {
            store,
            dir,
            sys_changes: Arc::default(),
        })
    }

    /// A counter that grows after every applied batch, and every installed snapshot, that
    /// changed `_sys`, once the change is committed: a cache of `_sys` records read when the
    /// counter had a value is current while it still has it. Not state: it starts at 0.
    pub fn sys_changes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::clone(&self.sys_changes)
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The last applied log id and membership as `view` sees them.
    pub fn applied(view: &ReadView) -> io::Result<(Option<LogId>, StoredMembership)> {
        StateMachine::decode_applied(|name| {
            view.meta(name)
                .map_err(|e| other("reading applied state", e))
        })
    }

    /// The last applied log id and membership an archive of the whole store (a snapshot or a
    /// backup) was taken at, from its header's meta.
    pub fn applied_in(meta: &[(String, Vec<u8>)]) -> io::Result<(Option<LogId>, StoredMembership)> {
        StateMachine::decode_applied(|name| {
            Ok(meta.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        })
    }

    /// The same, from meta rows found by `decode` (absent rows: nothing applied yet).
    fn decode_applied(
        decode: impl Fn(&str) -> io::Result<Option<Vec<u8>>>,
    ) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied = match decode(META_APPLIED)? {
            Some(b) => codec::unseal(META_FORMAT, &b)
                .map_err(|e| other("decoding the applied log id", e))?,
            None => None,
        };
        let membership = match decode(META_MEMBERSHIP)? {
            Some(b) => {
                codec::unseal(META_FORMAT, &b).map_err(|e| other("decoding the membership", e))?
            }
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    fn current(dir: &Path) -> io::Result<Option<Current>> {
        match std::fs::read(dir.join(CURRENT)) {
            Ok(b) => codec::unseal(META_FORMAT, &b)
                .map(Some)
                .map_err(|e| other("reading the current snapshot's meta", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names `file` (already in `dir`, fsynced) as the current snapshot and removes the others.
    pub(crate) fn set_current(dir: &Path, meta: &SnapshotMeta, file: &str) -> io::Result<()> {
        let sidecar = codec::seal(
            META_FORMAT,
            &Current {
                meta: meta.clone(),
                file: file.to_owned(),
            },
        );
        write_durably(&dir.join(format!("{CURRENT}.tmp")), &sidecar)?;
        std::fs::rename(dir.join(format!("{CURRENT}.tmp")), dir.join(CURRENT))?;
        File::open(dir)?.sync_all()?;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".mkva") && name != file {
                std::fs::remove_file(dir.join(&name)).ok();
            }
        }
        Ok(())
    }
}

pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = metakv_store::private::create_file(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub(crate) fn snapshot_name(log_id: &Option<LogId>) -> String {
    match log_id {
        Some(l) => format!("snapshot-{}-{}.mkva", l.leader_id.term, l.index),
        None => "snapshot-0-0.mkva".to_owned(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>> {
        let (store, dir) = (Arc::clone(&self.store), self.dir.clone());
        blocking(move || {
            let (meta, path) = StateMachine::snapshot_now(&read_store(&store), &dir)?;
            Ok(openraft::Snapshot {
                meta,
                snapshot: SnapshotFile::open(&path)?,
            })
        })
        .await
    }
}

impl StateMachine {
    /// Writes a snapshot of `store` as it is now into `dir` and makes it the current one;
    /// returns its meta and its file.
    pub(crate) fn snapshot_now(store: &Store, dir: &Path) -> io::Result<(SnapshotMeta, PathBuf)> {
        // IMPORTANT: openraft purges the log up to a snapshot; everything the snapshot holds
        // must be durable in the store first, or a crash would lose entries no log holds.
        store
            .sync()
            .map_err(|e| other("syncing before a snapshot", e))?;
        // IMPORTANT: the meta comes from the same view as the data. Entries keep being
        // applied while a snapshot is built; a meta read from a later view would claim
        // entries the data does not hold, and a node installing it would skip them.
        let view = store
            .read()
            .map_err(|e| other("reading for a snapshot", e))?;
        let (last_log_id, last_membership) = StateMachine::applied(&view)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let name = snapshot_name(&meta.last_log_id);
        let tmp = dir.join(format!("{name}.tmp"));
        let out = BufWriter::new(metakv_store::private::create_file(&tmp)?);
        let (summary, out) = view
            .export(Scope::Store, out, |_| {})
            .map_err(|e| other("exporting", e))?;
        out.into_inner()
            .map_err(|e| other("writing a snapshot", e.error()))?
            .sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        StateMachine::set_current(dir, &meta, &name)?;
        tracing::info!(snapshot = %name, records = summary.records, bytes = summary.bytes, "snapshot built");
        Ok((meta, dir.join(name)))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let store = Arc::clone(&self.store);
        blocking(move || {
            let view = read_store(&store)
                .read()
                .map_err(|e| other("reading applied state", e))?;
            StateMachine::applied(&view)
        })
        .await
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let batch: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let Some(last) = batch.last().map(|(e, _)| e.log_id) else {
            return Ok(());
        };
        let (entries, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let sys = entries
            .iter()
            .any(|e| matches!(&e.payload, EntryPayload::Normal(cmd) if writes_sys(&cmd.op)));
        let store = Arc::clone(&self.store);
        let responses = blocking(move || {
            let store = read_store(&store);
            store
                .write(|w| {
                    let mut out = Vec::with_capacity(entries.len());
                    let mut membership = None;
                    for entry in &entries {
                        let response = match &entry.payload {
                            EntryPayload::Normal(cmd) => {
                                let stamp = Stamp {
                                    rev: entry.log_id.index,
                                    time_ms: cmd.time_ms,
                                };
                                match w.apply(&cmd.op, stamp) {
                                    Ok(applied) => Response::Applied(applied),
                                    Err(e) => {
                                        Response::Rejected(Rejection::from_store(&e).ok_or(e)?)
                                    }
                                }
                            }
                            EntryPayload::Membership(m) => {
                                membership =
                                    Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                                Response::Applied(Applied::Done)
                            }
                            EntryPayload::Blank => Response::Applied(Applied::Done),
                        };
                        out.push(response);
                    }
                    w.set_meta(META_APPLIED, &codec::seal(META_FORMAT, &Some(last)))?;
                    if let Some(m) = membership {
                        w.set_meta(META_MEMBERSHIP, &codec::seal(META_FORMAT, &m))?;
                    }
                    Ok(out)
                })
                .map_err(|e| other("applying entries", e))
        })
        .await?;
        if sys {
            self.sys_changes
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        for (response, responder) in responses.into_iter().zip(responders) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> io::Result<()> {
        let (store, dir, meta) = (Arc::clone(&self.store), self.dir.clone(), meta.clone());
        blocking(move || {
            let store = read_store(&store);
            let name = snapshot_name(&meta.last_log_id);
            // Keep a copy as the current snapshot, then load it: the store is replaced whole or,
            // if the archive is damaged, not at all.
            let tmp = dir.join(format!("{name}.tmp"));
            let mut src = BufReader::new(snapshot.file);
            let mut dst = metakv_store::private::create_file(&tmp)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            // The archive carries the source's meta, applied log id and membership included, so
            // the store becomes byte for byte what the source was. Writing them again here
            // would add rows a source that had applied nothing does not have.
            let header = ArchiveReader::open(BufReader::new(File::open(&tmp)?))
                .map_err(|e| other("reading a snapshot's header", e))?;
            let (applied, membership) = StateMachine::applied_in(header.meta())?;
            if applied != meta.last_log_id || membership != meta.last_membership {
                return Err(other(
                    "installing a snapshot",
                    format!(
                        "its data is at {applied:?} with {membership:?}, its meta says {:?} with {:?}",
                        meta.last_log_id, meta.last_membership
                    ),
                ));
            }
            let imported = store
                .import(BufReader::new(File::open(&tmp)?))
                .map_err(|e| other("installing a snapshot", e))?;
            store
                .sync()
                .map_err(|e| other("syncing an installed snapshot", e))?;
            std::fs::rename(&tmp, dir.join(&name))?;
            StateMachine::set_current(&dir, &meta, &name)?;
            tracing::info!(snapshot = %name, records = imported.records, "snapshot installed");
            Ok(())
        })
        .await?;
        self.sys_changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>> {
        let dir = self.dir.clone();
        blocking(move || {
            let Some(current) = StateMachine::current(&dir)? else {
                return Ok(None);
            };
            let file = SnapshotFile::open(&dir.join(&current.file))?;
            Ok(Some(openraft::Snapshot {
                meta: current.meta,
                snapshot: file,
            }))
        })
        .await
    }
}
