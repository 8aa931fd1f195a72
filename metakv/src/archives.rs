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

/// The local directory a `file://` or plain-path location names; `None` for other schemes and
/// for a `file://` URI of another host. `file://localhost/dir` and `file:///dir` are `/dir`.
pub(crate) fn local_dir(uri: &str) -> Option<std::path::PathBuf> {
    let Some(rest) = uri.strip_prefix("file://") else {
        return (!uri.contains("://")).then(|| std::path::PathBuf::from(uri));
    };
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    path.starts_with('/')
        .then(|| std::path::PathBuf::from(path))
}

/// Checks that a pause or resume may use archive location `uri`: it must lie under one of
/// `roots` (absolute local directories, or `s3://bucket/prefix`), which the node's operator
/// names. A local location must be absolute, hold no `.` or `..` component, and stay under
/// its root once symlinks are resolved (the deepest part of it that exists is resolved). The
/// error says what is wrong; nothing has been written.
pub fn check_location(uri: &str, roots: &[String]) -> std::result::Result<(), String> {
    if roots.is_empty() {
        return Err(
            "this node names no archive roots: set `[hibernation] archive_roots` (or \
                    `serve --archive-root DIR`) to the directories or s3:// prefixes that pauses \
                    may write"
                .into(),
        );
    }
    let outside = || {
        format!(
            "archive location {uri:?} is under none of this node's archive roots ({})",
            roots.join(", ")
        )
    };
    if let Some(rest) = uri.strip_prefix("s3://") {
        if rest.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!(
                "archive location {uri:?} holds a . or .. component"
            ));
        }
        let under = roots
            .iter()
            .filter_map(|r| r.strip_prefix("s3://"))
            .any(|r| {
                let r = r.trim_end_matches('/');
                rest == r || rest.starts_with(&format!("{r}/"))
            });
        return if under { Ok(()) } else { Err(outside()) };
    }
    let Some(path) = local_dir(uri) else {
        return Err(format!(
            "archive location {uri:?}: only a local absolute path (file:///dir, \
             file://localhost/dir or /dir) or s3://bucket/prefix"
        ));
    };
    if !path.is_absolute() {
        return Err(format!(
            "archive location {uri:?} is a relative path: name an absolute one under an archive root"
        ));
    }
    use std::path::Component;
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "archive location {uri:?} holds a . or .. component"
        ));
    }
    let resolved = resolve(&path).map_err(|e| format!("archive location {uri:?}: {e}"))?;
    for root in roots.iter().filter(|r| !r.starts_with("s3://")) {
        let Ok(root) = std::fs::canonicalize(root) else {
            continue;
        };
        if resolved.starts_with(&root) {
            return Ok(());
        }
    }
    Err(outside())
}

/// A visibility marker's name: this prefix and 32 hex digits, which are also its contents.
const MARKER_PREFIX: &str = ".metakv-visible-";

/// A marker the leader wrote into a local archive location, for every voter to read back
/// (`ClientRequest::ArchiveVisible`): a local root that is not the same directory on every
/// voter (a shared mount) would leave a paused bucket that a later leader cannot resume.
#[derive(Debug)]
pub(crate) struct Marker {
    /// The directory it is in.
    dir: std::path::PathBuf,
    /// Its name.
    pub(crate) name: String,
    /// The directories writing it created, deepest first, to remove with it.
    created: Vec<std::path::PathBuf>,
}

impl Marker {
    /// Writes a new marker into the local location `dir` (made if missing), fsynced.
    pub(crate) fn write(dir: &std::path::Path) -> std::io::Result<Marker> {
        let mut created = Vec::new();
        let mut missing = Some(dir);
        while let Some(d) = missing.filter(|d| !d.exists()) {
            created.push(d.to_owned());
            missing = d.parent();
        }
        metakv_store::private::create_dir_all(dir)?;
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{MARKER_PREFIX}{hex}");
        let mut file = metakv_store::private::create_file(&dir.join(&name))?;
        std::io::Write::write_all(&mut file, hex.as_bytes())?;
        file.sync_all()?;
        Ok(Marker {
            dir: dir.to_owned(),
            name,
            created,
        })
    }

    /// Removes the marker, and the directories writing it made.
    pub(crate) fn remove(self) {
        std::fs::remove_file(self.dir.join(&self.name)).ok();
        for d in &self.created {
            std::fs::remove_dir(d).ok();
        }
    }
}

/// Checks, on a voter, that the marker `name` the leader wrote into archive location `uri`
/// is there with its contents, and that `uri` is under one of this node's `roots`.
pub(crate) fn read_marker(uri: &str, name: &str, roots: &[String]) -> Result<(), String> {
    check_location(uri, roots)?;
    let hex = name
        .strip_prefix(MARKER_PREFIX)
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{name:?} is not an archive marker's name"))?;
    let dir = local_dir(uri).ok_or_else(|| format!("archive location {uri:?} is not local"))?;
    let path = dir.join(name);
    let mut contents = Vec::new();
    let read = std::fs::File::open(&path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 64), &mut contents));
    match read {
        Ok(_) if contents == hex.as_bytes() => Ok(()),
        Ok(_) => Err(format!(
            "{} holds something else than the marker the leader wrote",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot read the marker the leader wrote, {}: {e}",
            path.display()
        )),
    }
}

/// `path` with its deepest existing ancestor's symlinks resolved, and the rest appended.
fn resolve(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let mut existing = path;
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name().unwrap_or_default().to_owned());
        existing = match existing.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let mut out = std::fs::canonicalize(existing)?;
    for part in rest.iter().rev() {
        out.push(part);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_only_as_written_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let roots = vec![root.display().to_string()];
        let location = root.join("a/b");
        let uri = location.display().to_string();
        let marker = Marker::write(&location).unwrap();
        assert_eq!(read_marker(&uri, &marker.name, &roots), Ok(()));
        let other = format!("{MARKER_PREFIX}{}", "0".repeat(32));
        let e = read_marker(&uri, &other, &roots).unwrap_err();
        assert!(e.contains("cannot read the marker"), "{e}");
        std::fs::write(location.join(&other), b"something else").unwrap();
        let e = read_marker(&uri, &other, &roots).unwrap_err();
        assert!(e.contains("something else than the marker"), "{e}");
        std::fs::remove_file(location.join(&other)).unwrap();
        for bad in ["../../etc/passwd", ".metakv-visible-zz", "archive.mkva"] {
            let e = read_marker(&uri, bad, &roots).unwrap_err();
            assert!(e.contains("not an archive marker"), "{bad}: {e}");
        }
        let e = read_marker("/etc", &marker.name, &roots).unwrap_err();
        assert!(e.contains("under none"), "{e}");
        marker.remove();
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "a/b removed too"
        );
    }

    #[test]
    fn archive_locations_must_lie_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("ok")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("link")).unwrap();
        let roots = vec![root.display().to_string(), "s3://bkt/metakv".to_owned()];
        let r = root.display();
        for good in [
            format!("{r}/ok"),
            format!("{r}/new/deeper"),
            format!("file://{r}/ok"),
            format!("file://localhost{r}/ok"),
            "s3://bkt/metakv/x".to_owned(),
            "s3://bkt/metakv".to_owned(),
        ] {
            assert_eq!(check_location(&good, &roots), Ok(()), "{good}");
        }
        for (bad, says) in [
            (format!("{r}/../elsewhere"), ". or .."),
            (format!("{r}/link/x"), "under none"),
            ("relative/dir".to_owned(), "relative"),
            (format!("file://other{r}"), "only a local"),
            (
                dir.path().join("elsewhere").display().to_string(),
                "under none",
            ),
            ("s3://bkt/metakv2".to_owned(), "under none"),
            ("s3://bkt/metakv/../x".to_owned(), ". or .."),
            ("ftp://x/y".to_owned(), "only a local"),
        ] {
            let e = check_location(&bad, &roots).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let none = check_location(&format!("{r}/ok"), &[]).unwrap_err();
        assert!(none.contains("no archive roots"), "{none}");
        assert_eq!(local_dir("file://localhost/srv/a"), Some("/srv/a".into()));
        assert_eq!(local_dir("file://host/srv/a"), None);
    }
}
