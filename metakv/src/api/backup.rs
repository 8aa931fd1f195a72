//! The client's half of a backup: begin it on the leader, pull it in chunks from the node
//! that holds it, check it whole, keep it (see `crate::backup` for the node's half).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use metakv_raft::StateMachine;
use metakv_store::Scope;
use metakv_store::archive::ArchiveReader;

use super::{BackupInfo, ClientReply, ClientRequest, Kv};
use crate::error::{Error, Result};

/// Bytes per `BackupChunk` reply.
pub const CHUNK_BYTES: u64 = 1 << 20;

pub(crate) async fn begin(kv: &impl Kv) -> Result<BackupInfo> {
    match kv.request(ClientRequest::BackupBegin).await? {
        ClientReply::Backup(info) => Ok(info),
        other => crate::api::unexpected(other),
    }
}

/// Pulls backup `info` into `path` (through `path.partial`), checks it whole, makes it durable,
/// and tells the node it may drop its copy (if the node cannot be told, the backup is still
/// whole; the node drops its copy once it has been idle for `crate::backup::IDLE`). `on_bytes` sees the
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
        let mut out = BufWriter::new(
            metakv_store::private::create_file(&partial).map_err(|e| io("creating", e))?,
        );
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
    let file = File::open(path)
        .map_err(|e| Error::Archive(format!("cannot open {}: {e}", path.display())))?;
    check(file).map_err(|e| match e {
        Error::Archive(why) => Error::Archive(format!("{}: {why}", path.display())),
        other => other,
    })
}

/// The same, of any reader; `Error::Archive` says what is wrong with it.
pub(crate) fn check(input: impl Read) -> Result<BackupSummary> {
    let bad = |e: &dyn std::fmt::Display| Error::Archive(e.to_string());
    let mut reader = ArchiveReader::open(BufReader::new(input)).map_err(|e| bad(&e))?;
    if reader.scope() != &Scope::Store {
        return Err(bad(&"a bucket's archive, not a backup of the whole store"));
    }
    let applied = StateMachine::applied_in(reader.meta())
        .map_err(|e| bad(&e))?
        .0
        .map_or(0, |l| l.index);
    let (mut buckets, mut records) = (0, 0);
    while let Some(frame) = reader.next().map_err(|e| bad(&e))? {
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
