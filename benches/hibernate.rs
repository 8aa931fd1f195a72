//! Pause and resume of one bucket, then a backup and a restore of the whole store, on a 3-node
//! cluster in this process (real redb files, real TCP on 127.0.0.1): load N records (default
//! 100,000; 16-byte keys, 256-byte values), pause the bucket to a local archive directory,
//! resume it, take a backup through a client, restore it into a new node's data dir, and
//! report records/s and MB/s of each.
//!
//! The baselines, measured in the same run on the same disk: a plain copy of the archive's (and
//! the backup's) bytes (read the file, write a new one, fsync it), which is the least each step
//! must move.
//!
//! `cargo bench --bench hibernate -- 100000`

mod common;

use std::time::{Duration, Instant};

use metakv::Kv;

const VALUE_BYTES: usize = 256;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(n));
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = common::cluster(dir.path(), |_| {}).await;
    let value = vec![b'x'; VALUE_BYTES];
    let t = Instant::now();
    let key = |i: usize| format!("user/{i:010}").into_bytes();
    common::load(&leader, "users", n, key, &value).await;
    println!("loaded {n} records in {:.1?}", t.elapsed());
    let applied = leader.status().await.unwrap().applied;
    while nodes.iter().any(|n| n.node_status().applied < applied) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let archive = dir.path().join("archive");
    let t = Instant::now();
    let paused = leader
        .pause_bucket("users", &archive.display().to_string())
        .await
        .unwrap();
    let pause = t.elapsed();
    let record = paused.record.unwrap();
    let manifest = record.manifest.unwrap();
    let file = archive.join(&record.objects).join("archive.mkva");

    // The baseline: the same bytes copied and made durable.
    let copy = copy_durably(&file, &dir.path().join("copy.mkva"));

    let t = Instant::now();
    leader.resume_bucket("users", None).await.unwrap();
    let resume = t.elapsed();
    let info = leader.bucket("users").await.unwrap();
    assert_eq!(info.records, n as u64, "every record is back");

    // A backup of the whole store through a client over TCP, and an offline restore of it.
    let creds = metakv::ClientCreds::load(&dir.path().join("node1").join(metakv::tls::ADMIN_CREDS))
        .unwrap();
    let client = metakv::Client::new(vec![leader.addr().to_owned()], "metakv", &creds).unwrap();
    let backup_file = dir.path().join("store.backup");
    let t = Instant::now();
    let backup = client.backup(&backup_file, |_, _| {}).await.unwrap();
    let backup_time = t.elapsed();
    let backup_copy = copy_durably(&backup_file, &dir.path().join("copy.backup"));
    let (restore_dir, from) = (dir.path().join("restored"), backup_file.clone());
    let t = Instant::now();
    let restored = tokio::task::spawn_blocking(move || {
        let input = std::io::BufReader::new(std::fs::File::open(from).unwrap());
        metakv_raft::restore::restore_node(&restore_dir, input, 1, "127.0.0.1:7379").unwrap()
    })
    .await
    .unwrap();
    let restore_time = t.elapsed();
    assert_eq!(restored.records, backup.records);

    let bytes = manifest.bytes;
    println!(
        "archive: {} records, {:.1} MB in {} chunks",
        manifest.records,
        bytes as f64 / 1e6,
        manifest.chunks.len()
    );
    table(
        manifest.records,
        bytes,
        [("pause", pause), ("resume", resume)],
        copy,
    );
    println!(
        "backup: {} records, {:.1} MB",
        backup.records,
        backup.bytes as f64 / 1e6
    );
    table(
        backup.records,
        backup.bytes,
        [("backup", backup_time), ("restore", restore_time)],
        backup_copy,
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A markdown table of `steps` that moved `records` in `bytes`, against the file copy `copy`.
fn table(records: u64, bytes: u64, steps: [(&str, Duration); 2], copy: Duration) {
    println!("| step | time | records/s | MB/s | time vs file copy |");
    println!("|---|---|---|---|---|");
    for (name, d) in [("file copy (baseline)", copy)].into_iter().chain(steps) {
        println!(
            "| {name} | {:.0} ms | {:.0} | {:.1} | {:.1}x |",
            d.as_secs_f64() * 1e3,
            rate(records, d),
            rate(bytes, d) / 1e6,
            d.as_secs_f64() / copy.as_secs_f64()
        );
    }
}

/// Copies `from` to `to` and fsyncs the copy; how long it took.
fn copy_durably(from: &std::path::Path, to: &std::path::Path) -> Duration {
    let t = Instant::now();
    std::fs::copy(from, to).unwrap();
    std::fs::File::open(to).unwrap().sync_all().unwrap();
    t.elapsed()
}
