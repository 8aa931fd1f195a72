//! Owner-only files and directories, whatever the umask.
//!
//! Everything metakv writes (state, log, snapshots, backups, identities, archives written to
//! a local directory) holds users, roles and configuration, so it is `0600` (files) and `0700`
//! (directories). A mode given at creation is masked by the process's umask, which can only
//! take bits away, so a new file or directory is owner-only under any umask; what something
//! else created (redb, the object store's local files) is set afterwards with [`restrict`].
//! The library never changes the process's umask: it belongs to the application.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file metakv creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory metakv creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents, each new one owner-only (`0700`); `dir` itself is
/// made owner-only even if it existed.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    restrict(dir)
}

/// Creates (or truncates) `path` for writing, owner-only (`0600`).
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // An existing file keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Makes `path` owner-only: `0700` for a directory, `0600` for anything else.
pub fn restrict(path: &Path) -> io::Result<()> {
    let mode = if std::fs::metadata(path)?.is_dir() {
        DIR_MODE
    } else {
        FILE_MODE
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn what_is_created_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        assert_eq!(mode(&nested), DIR_MODE);
        let file = nested.join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_file(&file).unwrap();
        assert_eq!(
            mode(&file),
            FILE_MODE,
            "an existing file is made owner-only"
        );
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o777)).unwrap();
        restrict(&nested).unwrap();
        assert_eq!(mode(&nested), DIR_MODE);
    }
}
