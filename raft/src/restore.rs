//! A new node's files from a backup: the offline work of `metakv restore`.
//!
//! A backup is a `Scope::Store` archive of one node's store taken at a log id
//! `L = (term, leader, index)`, with the store's meta (`raft.applied`, `raft.membership`).
//! Revisions are log indexes, so a restored cluster must go on from `L.index`, never from 1:
//! records keep their revisions and every new write gets a higher one, so watch cursors and
//! `--if-rev` expectations keep their meaning. The restored node starts as if it had applied
//! and purged everything up to `L` itself:
//!
//! - `state.redb`: the backup imported, then its applied log id set to `L' = (term, this node,
//!   index)` and its membership to this node alone, at `L'`;
//! - `snapshots/`: a snapshot of that store at `L'`, what a node that joins later is sent;
//! - `raft-log.redb`: no entries, purged and committed up to `L'`, and a vote for this node in
//!   `term` (not committed), so its first election is in `term + 1`, above every term of the
//!   backed-up cluster. Hibernation op ids carry the leader's term, so no new operation can
//!   name an old one's archive objects.
//!
//! [`PARTIAL`] exists from the first file written until the last one is durable; a node refuses
//! to start on a data dir that has it, and a failed restore removes every file it wrote.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use metakv_store::{Config, Store, codec};
use openraft::Membership;

use crate::state_machine::{META_FORMAT, StateMachine, write_durably};
use crate::types::{LogId, NodeAddr, StoredMembership, Vote};
use crate::{LogStore, META_APPLIED, META_MEMBERSHIP};

/// The files of a node's data dir.
pub const STATE_FILE: &str = "state.redb";
pub const LOG_FILE: &str = "raft-log.redb";
pub const SNAPSHOT_DIR: &str = "snapshots";
/// Present while a restore writes a data dir.
pub const PARTIAL: &str = "restore.partial";
/// Present from a restore's end until the node's first start: the node starts a new cluster
/// (it makes the cluster's CA), though it has a log.
pub const RESTORED: &str = "restored";

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The log id the backup was taken at, as its cluster knew it (`None`: the backed-up node
    /// had applied nothing, and the restored node starts a new cluster like a new node).
    pub source: Option<LogId>,
    /// Where the restored node's log begins.
    pub start: Option<LogId>,
    /// The store's last revision in the backup.
    pub rev: u64,
    pub buckets: u64,
    pub records: u64,
}

fn fail(doing: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("restore: {doing}: {e}"))
}

/// Writes node `id`'s files into `dir` (created if missing; it must hold no node files) from
/// `backup`, a `Scope::Store` archive. `addr` is the address recorded for the node; a node
/// that starts alone in its cluster and listens elsewhere records its own address instead.
/// On any error (a damaged or cut backup included) every file it wrote is removed.
pub fn restore_node(dir: &Path, backup: impl Read, id: u64, addr: &str) -> io::Result<Restored> {
    if let Some(name) = [STATE_FILE, LOG_FILE, SNAPSHOT_DIR, PARTIAL]
        .into_iter()
        .find(|name| dir.join(name).exists())
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "restore: checking the data dir: {} already holds {name}; a restore makes a new \
                 node's files in an empty data dir",
                dir.display()
            ),
        ));
    }
    // A refused restore leaves no data dir it made (an empty one would look like a node's).
    let made = !dir.exists();
    metakv_store::private::create_dir_all(dir).map_err(|e| fail("creating the data dir", e))?;
    write_durably(
        &dir.join(PARTIAL),
        b"a restore is writing this data dir; if it was interrupted, remove the dir and restore again\n",
    )
    .map_err(|e| fail("marking the data dir", e))?;
    sync_dir(dir)?;
    match write_files(dir, backup, id, addr) {
        Ok(restored) => {
            write_durably(
                &dir.join(RESTORED),
                b"restored from a backup; the node's first start makes a new cluster\n",
            )
            .map_err(|e| fail("marking the data dir", e))?;
            std::fs::remove_file(dir.join(PARTIAL)).map_err(|e| fail("unmarking", e))?;
            sync_dir(dir)?;
            Ok(restored)
        }
        Err(e) => {
            for name in [STATE_FILE, LOG_FILE] {
                std::fs::remove_file(dir.join(name)).ok();
            }
            std::fs::remove_dir_all(dir.join(SNAPSHOT_DIR)).ok();
            std::fs::remove_file(dir.join(RESTORED)).ok();
            std::fs::remove_file(dir.join(PARTIAL)).ok();
            if made {
                std::fs::remove_dir_all(dir).ok();
            }
            Err(e)
        }
    }
}

fn write_files(dir: &Path, backup: impl Read, id: u64, addr: &str) -> io::Result<Restored> {
    let store = Store::open(Config::new(dir.join(STATE_FILE)))
        .map_err(|e| fail("creating the store", e))?;
    let imported = store
        .import(backup)
        .map_err(|e| fail("importing the backup", e))?;
    let view = store
        .read()
        .map_err(|e| fail("reading the imported store", e))?;
    let (source, _) = StateMachine::applied(&view)?;
    drop(view);
    let mut restored = Restored {
        source,
        start: None,
        rev: imported.rev,
        buckets: imported.buckets,
        records: imported.records,
    };
    let Some(source) = source else {
        return Ok(restored);
    };
    let mut start = source;
    start.leader_id.node_id = id;
    let membership = StoredMembership::new(
        Some(start),
        Membership::from(BTreeMap::from([(
            id,
            NodeAddr {
                addr: addr.to_owned(),
            },
        )])),
    );
    store
        .write(|w| {
            w.set_meta(META_APPLIED, &codec::seal(META_FORMAT, &Some(start)))?;
            w.set_meta(META_MEMBERSHIP, &codec::seal(META_FORMAT, &membership))?;
            Ok(())
        })
        .map_err(|e| fail("writing the node's log id and membership", e))?;
    let snapshots = dir.join(SNAPSHOT_DIR);
    metakv_store::private::create_dir_all(&snapshots)
        .map_err(|e| fail("creating the snapshot dir", e))?;
    StateMachine::snapshot_now(&store, &snapshots)?;
    drop(store);
    LogStore::open(&dir.join(LOG_FILE))?.start_after(start, Vote::new(start.leader_id.term, id))?;
    restored.start = Some(start);
    Ok(restored)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("syncing the data dir", e))
}
