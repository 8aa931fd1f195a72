//! `check --data-dir` looked only at the state file: a flipped byte or a truncation in
//! `raft-log.redb` was reported "clean", and a `state.redb` truncated to 0 bytes was opened as
//! a new, empty store and reported "0 records, clean". The check now opens both files without
//! creating either, and checks every log entry's crc and sequence, the vote, the commit and
//! purge points, and the state against the log (applied index, membership).

use std::process::Command;

use crate::common::Cluster;
use metakv::{Kv, store::Expect};

const MARKER: &[u8] = b"check-covers-the-raft-log";

fn check(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metakv"))
        .args(["check", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["state.redb", "raft-log.redb"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_damage_in_either_file() {
    let mut cluster = Cluster::start(1).await;
    let node = cluster.node(1).clone();
    node.create_bucket("b").await.unwrap();
    for i in 0..200u32 {
        node.put("b", format!("k{i}").as_bytes(), MARKER, Expect::Any)
            .await
            .unwrap();
    }
    drop(node);
    cluster.stop(1).await;
    let dir = cluster.dir.path().join("node1");
    let (code, text) = check(&dir);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("raft log"),
        "the check says nothing of the log: {text}"
    );

    let scratch = tempfile::tempdir().unwrap();
    // Every copy of the marker in the log file flipped: an entry whose bytes changed.
    let flipped = scratch.path().join("flipped");
    copy_dir(&dir, &flipped);
    let mut log = std::fs::read(flipped.join("raft-log.redb")).unwrap();
    let mut hits = 0;
    for i in 0..log.len() - MARKER.len() {
        if &log[i..i + MARKER.len()] == MARKER {
            log[i + 3] ^= 0x20;
            hits += 1;
        }
    }
    assert!(hits > 0, "the log holds no value bytes to flip");
    std::fs::write(flipped.join("raft-log.redb"), &log).unwrap();
    // The log cut in half.
    let cut = scratch.path().join("cut");
    copy_dir(&dir, &cut);
    let len = std::fs::metadata(cut.join("raft-log.redb")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(cut.join("raft-log.redb"))
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // The state file truncated to nothing.
    let empty = scratch.path().join("empty");
    copy_dir(&dir, &empty);
    std::fs::write(empty.join("state.redb"), b"").unwrap();
    for (what, damaged) in [("flipped", &flipped), ("cut", &cut), ("empty", &empty)] {
        let (code, text) = check(damaged);
        assert_eq!(code, 1, "{what}: check passed a damaged dir: {text}");
    }
    assert_eq!(
        std::fs::metadata(empty.join("state.redb")).unwrap().len(),
        0,
        "check wrote to the file it checked"
    );
}
