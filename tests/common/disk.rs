//! Disks that fill: a small tmpfs (mounting one needs root) and a filler file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one of `bytes` at `at`; panics (naming the cause) when it cannot.
    pub fn mount(at: &Path, bytes: u64) -> Tmpfs {
        Tmpfs::try_mount(at, bytes)
            .unwrap_or_else(|e| panic!("this test mounts a tmpfs and needs root: {e}"))
    }

    pub fn try_mount(at: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system that holds `dir` up to its last `keep` bytes.
pub fn fill(dir: &Path, keep: u64) -> PathBuf {
    let free = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(dir)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    f.set_len(0).unwrap();
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    let chunk = vec![0u8; 1 << 16];
    let mut left = free.saturating_sub(keep);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if w.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = w.flush();
    filler
}
