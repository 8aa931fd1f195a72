//! A data dir's identity: which node of which cluster its files belong to, and the node's
//! incarnation.
//!
//! A node's first start writes `<data dir>/identity`; every later start reads it before
//! anything in the dir is opened for writing, and refuses an `id` or `cluster_id` that differs
//! from the recorded one. Without it, `serve --id 5` on node 3's dir started as a learner 5
//! holding node 3's log and state, answering and forwarding writes.
//!
//! The incarnation is drawn at random on the first start and never changes while the dir
//! lives: a join retried by the same incarnation is the same node asking again (its answer was
//! lost), while a voter's id joining with another incarnation is a node that lost its files.
//!
//! ```text
//!  identity (format 1), sealed like every persisted value (metakv_store::codec):
//!  +---------+------------------------------------------------+--------+
//!  | version | postcard { node_id: varint u64,                 | crc32  |
//!  |  u8 = 1 |            cluster_id: varint len | utf-8,      | u32 LE |
//!  |         |            incarnation: varint u64 }            |        |
//!  +---------+------------------------------------------------+--------+
//! ```
//!
//! A dir written before identities existed (state files, no `identity`) is adopted on its
//! first start: the identity is written with the node's `id` and `cluster_id` and a new
//! incarnation (see `docs/design.md`, "A data dir belongs to one node").

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use metakv_raft::restore;

/// The file name, in the data dir.
pub const IDENTITY_FILE: &str = "identity";
/// Format of the sealed identity. Changing its fields is a format change.
pub const IDENTITY_FORMAT: u8 = 1;

/// Which node a data dir belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    pub cluster_id: String,
    /// Drawn at random on the node's first start; a node that lost its dir has a new one.
    pub incarnation: u64,
}

/// Why a data dir cannot be used by this node; nothing in it has been changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(
        "{dir} belongs to node {recorded} of cluster {recorded_cluster:?}, not to node {asked}: \
         start node {recorded} on it, or give node {asked} a data dir of its own"
    )]
    OtherNode {
        dir: String,
        recorded: u64,
        recorded_cluster: String,
        asked: u64,
    },
    #[error(
        "{dir} belongs to cluster {recorded:?}, not to cluster {asked:?} (node {node}): start \
         it with --cluster-id {recorded}, or give this node a data dir of its own"
    )]
    OtherCluster {
        dir: String,
        node: u64,
        recorded: String,
        asked: String,
    },
    #[error("{path} is unreadable ({reason}): damaged, or not a metakv identity")]
    Unreadable { path: String, reason: String },
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: String,
        source: std::io::Error,
    },
}

impl IdentityError {
    fn io(doing: &'static str, path: &Path, source: std::io::Error) -> IdentityError {
        IdentityError::Io {
            doing,
            path: path.display().to_string(),
            source,
        }
    }

    /// A mismatch (the node was started on the wrong dir), rather than a failing disk.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            IdentityError::OtherNode { .. } | IdentityError::OtherCluster { .. }
        )
    }
}

impl Identity {
    /// Reads the identity of the data dir `dir` (`Ok(None)` if it has none yet).
    pub fn read(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => metakv_store::codec::unseal(IDENTITY_FORMAT, &bytes)
                .map(Some)
                .map_err(|reason| IdentityError::Unreadable {
                    path: path.display().to_string(),
                    reason,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IdentityError::io("reading", &path, e)),
        }
    }
}

/// Reads `dir`'s identity and checks it against `node_id` and `cluster_id`; a dir with none
/// gets one (a new dir, or one written before identities existed). Reads only, until the
/// check has passed.
pub fn claim(dir: &Path, node_id: u64, cluster_id: &str) -> Result<Identity, IdentityError> {
    if let Some(identity) = Identity::read(dir)? {
        check(dir, &identity, node_id, cluster_id)?;
        return Ok(identity);
    }
    let path = dir.join(IDENTITY_FILE);
    let identity = Identity {
        node_id,
        cluster_id: cluster_id.to_owned(),
        incarnation: draw_incarnation(&path)?,
    };
    let adopted = dir.join(restore::STATE_FILE).exists() || dir.join(restore::LOG_FILE).exists();
    write(dir, &identity)?;
    if adopted {
        tracing::info!(
            node_id,
            cluster_id,
            dir = %dir.display(),
            "recorded the identity of a data dir written before identities existed"
        );
    }
    Ok(identity)
}

fn check(
    dir: &Path,
    identity: &Identity,
    node_id: u64,
    cluster_id: &str,
) -> Result<(), IdentityError> {
    if identity.node_id != node_id {
        return Err(IdentityError::OtherNode {
            dir: dir.display().to_string(),
            recorded: identity.node_id,
            recorded_cluster: identity.cluster_id.clone(),
            asked: node_id,
        });
    }
    if identity.cluster_id != cluster_id {
        return Err(IdentityError::OtherCluster {
            dir: dir.display().to_string(),
            node: node_id,
            recorded: identity.cluster_id.clone(),
            asked: cluster_id.to_owned(),
        });
    }
    Ok(())
}

fn draw_incarnation(path: &Path) -> Result<u64, IdentityError> {
    getrandom::u64().map_err(|e| {
        IdentityError::io(
            "drawing an incarnation for",
            path,
            std::io::Error::other(e.to_string()),
        )
    })
}

/// Writes the identity durably: a temporary file (owner-only), fsynced, renamed over
/// `identity`, and the dir fsynced, so a crash leaves the old identity or the new, whole.
fn write(dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    metakv_store::private::create_dir_all(dir)
        .map_err(|e| IdentityError::io("creating the data dir", dir, e))?;
    let path = dir.join(IDENTITY_FILE);
    let tmp: PathBuf = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let bytes = metakv_store::codec::seal(IDENTITY_FORMAT, identity);
    let mut file = metakv_store::private::create_file(&tmp)
        .map_err(|e| IdentityError::io("creating", &tmp, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| IdentityError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| IdentityError::io("renaming", &tmp, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IdentityError::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_is_claimed_once_and_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let first = claim(dir.path(), 3, "prod").unwrap();
        assert_eq!((first.node_id, first.cluster_id.as_str()), (3, "prod"));
        assert_eq!(
            claim(dir.path(), 3, "prod").unwrap(),
            first,
            "same incarnation"
        );
        let bytes = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();

        let other = claim(dir.path(), 5, "prod").unwrap_err();
        assert!(other.is_mismatch());
        let text = other.to_string();
        assert!(text.contains("node 3") && text.contains("node 5"), "{text}");
        let cluster = claim(dir.path(), 3, "test").unwrap_err();
        assert!(cluster.is_mismatch());
        assert!(cluster.to_string().contains("\"prod\""), "{cluster}");
        assert_eq!(
            std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(),
            bytes,
            "a refusal changes nothing"
        );
    }

    #[test]
    fn two_dirs_draw_different_incarnations() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(
            claim(a.path(), 1, "metakv").unwrap().incarnation,
            claim(b.path(), 1, "metakv").unwrap().incarnation
        );
    }

    #[test]
    fn a_damaged_identity_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), 1, "metakv").unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = claim(dir.path(), 1, "metakv").unwrap_err();
        assert!(matches!(e, IdentityError::Unreadable { .. }), "{e}");
        assert!(!e.is_mismatch());
    }

    #[test]
    fn the_identity_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        claim(&data, 1, "metakv").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.join(IDENTITY_FILE)), 0o600);
        assert_eq!(mode(&data), 0o700);
    }
}
