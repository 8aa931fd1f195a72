//! Where archive locations lead: a local directory or an S3-compatible store. A leaf of the
//! library: the node's configuration names an [`Archives`], and hibernation opens archives
//! through it.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

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
pub(crate) fn local_dir(uri: &str) -> Option<std::path::PathBuf> {
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
            // Directories made here are owner-only; one that existed keeps its mode (it is the
            // operator's).
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(metakv_store::private::DIR_MODE)
                .create(&dir)
                .map_err(|source| ArchiveError::CreateDir {
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
    /// into place but does not sync it), and made owner-only with the directories under the
    /// location that lead to it (the local store creates them with the umask's modes).
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
            let restrict = |p: &std::path::Path| {
                metakv_store::private::restrict(p).map_err(|source| ArchiveError::Sync {
                    path: p.to_owned(),
                    source,
                })
            };
            restrict(&file)?;
            let mut under = file.parent();
            while let Some(d) = under.filter(|d| d.starts_with(&dir) && *d != dir) {
                restrict(d)?;
                under = d.parent();
            }
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
