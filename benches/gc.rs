//! Tombstone GC at scale, on a 3-node cluster in this process (real redb files, real TCP on
//! 127.0.0.1): load N records (default 1,000,000), delete P% of them (default 90), run one GC
//! job, and report:
//!
//! - the job's time per phase and tombstones purged per second;
//! - each node's state file before and after, against a fresh, compacted store holding only
//!   the live records (the goal: within 1.25x);
//! - the process's peak resident memory before and after the job (the manager keeps one page
//!   per node and two purge entries, whatever N is);
//! - p99 latency of one sequential writer before the job, during it and after it (goal: within
//!   3x of steady state), and during each phase of the job.
//!
//! `cargo bench --bench gc -- 200000 [--deleted 100] [--purge-batch 100] [--purges-in-flight 2]`.
//!
//! `../shared/bench/etcd-baseline.sh` (phase `gc`) runs etcd's `compact` + `defrag` on the
//! same shape; `docs/benchmarks.md` has both side by side.

use std::time::{Duration, Instant};

mod common;

use common::many;
use metakv::{Kv, Node, store::Expect};

const VALUE_BYTES: usize = 256;

fn key(i: usize) -> Vec<u8> {
    format!("user/{i:010}").into_bytes() // 16 bytes, as in the etcd baseline
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

/// Sequential puts to `config` until `stop` says so; when each began and how long it took.
async fn writer(node: Node, stop: tokio::sync::watch::Receiver<bool>) -> Vec<(Instant, Duration)> {
    let mut out = Vec::new();
    let mut i = 0u64;
    while !*stop.borrow() {
        let t = Instant::now();
        node.put("config", format!("k{i}").as_bytes(), b"v", Expect::Any)
            .await
            .expect("a write during GC");
        out.push((t, t.elapsed()));
        i += 1;
    }
    out
}

/// One sequential writer through `node` for two seconds, with nothing else running.
async fn steady_writes(node: &Node) -> Vec<(Instant, Duration)> {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let w = tokio::spawn(writer(node.clone(), stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).unwrap();
    w.await.unwrap()
}

fn latencies(w: &[(Instant, Duration)]) -> Vec<Duration> {
    w.iter().map(|&(_, d)| d).collect()
}

fn main() {
    // `METAKV_LOG=metakv=info,metakv_store=info` shows the nodes' own account of the job.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("METAKV_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let flag = |name: &str| -> Option<usize> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse().ok()
    };
    let deleted_pct = flag("--deleted").unwrap_or(90).min(100);
    let mut gc = metakv::GcConfig {
        interval_ms: 0,
        tombstone_threshold: 0,
        ..Default::default()
    };
    if let Some(b) = flag("--purge-batch") {
        gc.purge_batch = b as u32;
    }
    if let Some(p) = flag("--purges-in-flight") {
        gc.purges_in_flight = p as u32;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(n, deleted_pct, gc));
}

/// Record `i` survives the delete pass when it falls in the kept `100 - deleted_pct` percent.
fn kept(i: usize, deleted_pct: usize) -> bool {
    i % 100 >= deleted_pct
}

async fn run(n: usize, deleted_pct: usize, gc: metakv::GcConfig) {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, leader) = common::cluster(dir.path(), |c| c.gc = gc.clone()).await;
    leader.create_bucket("config").await.unwrap();
    let value = vec![b'x'; VALUE_BYTES];
    let t = Instant::now();
    common::load(&leader, "users", n, key, &value).await;
    println!("loaded {n} records in {:.1?}", t.elapsed());
    let t = Instant::now();
    many(n, |i| {
        let leader = &leader;
        async move {
            if !kept(i, deleted_pct) {
                leader.delete("users", &key(i), Expect::Any).await.unwrap();
            }
        }
    })
    .await;
    let live: Vec<usize> = (0..n).filter(|&i| kept(i, deleted_pct)).collect();
    println!("deleted {} in {:.1?}", n - live.len(), t.elapsed());
    let applied = leader.status().await.unwrap().applied;
    while nodes.iter().any(|n| n.node_status().applied < applied) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A fresh store with only the live records, compacted, for the size goal.
    let fresh_path = dir.path().join("fresh.redb");
    {
        let mut fresh =
            metakv::store::Store::open(metakv::store::Config::new(&fresh_path)).unwrap();
        fresh
            .apply(
                &metakv::Op::CreateBucket {
                    bucket: "users".into(),
                },
                metakv::store::Stamp { rev: 1, time_ms: 0 },
            )
            .unwrap();
        for (c, chunk) in live.chunks(1000).enumerate() {
            fresh
                .write(|w| {
                    for (j, &i) in chunk.iter().enumerate() {
                        let rev = 2 + (c * 1000 + j) as u64;
                        w.apply(
                            &metakv::Op::Put {
                                bucket: "users".into(),
                                key: key(i),
                                value: value.clone(),
                                expect: Expect::Any,
                            },
                            metakv::store::Stamp { rev, time_ms: 0 },
                        )?;
                    }
                    Ok(())
                })
                .unwrap();
        }
        fresh.compact().unwrap();
    }
    let fresh_bytes = std::fs::metadata(&fresh_path).unwrap().len();

    // Steady state, through the same node as the writer during the job.
    let steady = steady_writes(&nodes[0]).await;

    let before: Vec<u64> = nodes
        .iter()
        .map(|n| n.node_status().state_file_bytes)
        .collect();
    let rss_before = peak_rss_kib();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let w = tokio::spawn(writer(nodes[0].clone(), stop));
    let t = Instant::now();
    tracing::info!("GC job starts");
    let job = leader.gc_run(false, Some(0)).await.unwrap();
    let record = leader
        .gc_wait(job, Duration::from_millis(100))
        .await
        .unwrap();
    let took = t.elapsed();
    stop_tx.send(true).unwrap();
    let during = w.await.unwrap();
    let rss_after = peak_rss_kib();

    println!("GC job {job}: {:?} in {took:.1?}", record.outcome);
    for p in &record.phases {
        println!("  phase {:<14} {:>8} ms", p.phase, p.ms);
    }
    let purge_ms = record
        .phases
        .iter()
        .find(|p| p.phase.starts_with("collect"))
        .map_or(1, |p| p.ms.max(1));
    println!(
        "  agreed {}  purged {}  skipped {}  -> {:.0} tombstones/s purged (collect+purge phase)",
        record.agreed,
        record.purged,
        record.skipped,
        record.purged as f64 * 1000.0 / purge_ms as f64
    );
    println!(
        "  fresh compacted store with the {} live records: {} KiB",
        live.len(),
        fresh_bytes / 1024
    );
    for c in &record.compactions {
        println!(
            "  node {}: {} KiB -> {} KiB ({:.2}x the fresh store)",
            c.node,
            c.bytes_before / 1024,
            c.bytes_after / 1024,
            c.bytes_after as f64 / fresh_bytes as f64
        );
    }
    println!(
        "  state files before the job (KiB): {:?}",
        before.iter().map(|b| b / 1024).collect::<Vec<_>>()
    );
    println!(
        "  peak RSS before the job {} MiB, after {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    // Steady state again once the job is over: the baseline before it may still carry the
    // load phase's snapshots.
    let after = steady_writes(&nodes[0]).await;
    let (s, d, a) = (
        p99(latencies(&steady)),
        p99(latencies(&during)),
        p99(latencies(&after)),
    );
    println!(
        "  writer p99: steady before {:.2?} ({} writes), during the job {:.2?} ({} writes), steady after {:.2?} ({} writes): {:.2}x before, {:.2}x after",
        s,
        steady.len(),
        d,
        during.len(),
        a,
        after.len(),
        d.as_secs_f64() / s.as_secs_f64(),
        d.as_secs_f64() / a.as_secs_f64()
    );
    if std::env::var_os("METAKV_SLOW_WRITES").is_some() {
        for &(at, d) in during.iter().filter(|&&(_, d)| d > s * 3) {
            tracing::info!("slow write began {:.3?} into the job: {d:.2?}", at - t);
        }
    }
    // The phases ran one after another from the job's start: the writes that began in each.
    let mut from = t;
    for p in &record.phases {
        let to = from + Duration::from_millis(p.ms);
        let inside: Vec<(Instant, Duration)> = during
            .iter()
            .copied()
            .filter(|&(at, _)| at >= from && at < to)
            .collect();
        let max = inside.iter().map(|&(_, d)| d).max().unwrap_or_default();
        println!(
            "    during {:<14} {:>6} writes, p99 {:.2?}, max {:.2?}",
            p.phase,
            inside.len(),
            p99(latencies(&inside)),
            max
        );
        from = to;
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
