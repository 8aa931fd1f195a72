//! Pause and resume of one bucket on a 3-node cluster in this process (real redb files, real
//! TCP on 127.0.0.1): load N records (default 100,000; 16-byte keys, 256-byte values), pause
//! the bucket to a local archive directory, resume it, and report records/s and MB/s each way.
//!
//! The baseline, measured in the same run on the same disk: a plain copy of the archive's
//! bytes (read the file, write a new one, fsync it), which is the least a pause or a resume
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
    let copy_to = dir.path().join("copy.mkva");
    let t = Instant::now();
    std::fs::copy(&file, &copy_to).unwrap();
    std::fs::File::open(&copy_to).unwrap().sync_all().unwrap();
    let copy = t.elapsed();

    let t = Instant::now();
    leader.resume_bucket("users", None).await.unwrap();
    let resume = t.elapsed();
    let info = leader.bucket("users").await.unwrap();
    assert_eq!(info.records, n as u64, "every record is back");

    let bytes = manifest.bytes;
    let mb = |d: Duration| rate(bytes, d) / 1e6;
    println!(
        "archive: {} records, {:.1} MB in {} chunks",
        manifest.records,
        bytes as f64 / 1e6,
        manifest.chunks.len()
    );
    println!("| step | time | records/s | MB/s | time vs file copy |");
    println!("|---|---|---|---|---|");
    for (name, d) in [
        ("file copy (baseline)", copy),
        ("pause", pause),
        ("resume", resume),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} | {:.1} | {:.1}x |",
            d.as_secs_f64() * 1e3,
            rate(manifest.records, d),
            mb(d),
            d.as_secs_f64() / copy.as_secs_f64()
        );
    }
    for node in nodes {
        node.shutdown().await;
    }
}
