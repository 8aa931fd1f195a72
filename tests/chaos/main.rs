//! metakv's fault-injection suite: real `metakv serve` processes driven through the public
//! `Client` by concurrent clients and one watcher per node, under a seeded nemesis (kill -9
//! and SIGSTOP of leaders and followers, partitions and delays through proxies between the
//! nodes, membership changes, a full disk, pauses and resumes with the leader killed, GC jobs,
//! live compactions, backups), with every key's history checked for linearizability and every
//! node's copy compared after healing.
//! See `docs/reliability.md`.

#[path = "../common/mod.rs"]
mod common;

mod checker;
#[cfg(test)]
mod checker_tests;
mod cluster;
#[cfg(test)]
mod deaf_leader;
mod harness;
mod history;
mod nemesis;
mod net;
#[cfg(test)]
mod slow_network;

use std::io::Write;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One line per run, for `docs/reliability.md`: operations, faults by kind, unavailability.
fn summary(r: &harness::Report) -> String {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, k, _) in &r.faults {
        *kinds.entry(k).or_default() += 1;
    }
    let unavailable: Vec<String> = r
        .unavailability()
        .iter()
        .map(|(k, first, slowest)| {
            // No write went through after the fault before the next one: no measurement.
            let first = first.map_or_else(|| "-".to_owned(), |f| f.as_millis().to_string());
            format!("{k}:{first}:{}", slowest.as_millis())
        })
        .collect();
    format!(
        "seed={} seconds={} ops={} acked_writes={} unknown={} violations={} faults={kinds:?} unavailable_ms={}",
        r.seed,
        r.seconds,
        r.events.len(),
        r.acknowledged_writes(),
        r.unknown(),
        r.violations.len(),
        unavailable.join(",")
    )
}

/// The short run of the test command: `CHAOS_SEEDS` (default `1,2,3`) of `CHAOS_SECONDS`
/// (default 30) each; any violation fails it, printing the seed, the operations and the
/// faults around them, and keeping the data dirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_seeded_runs_break_no_promise() {
    let seconds = env_u64("CHAOS_SECONDS", 30);
    let seeds = std::env::var("CHAOS_SEEDS").unwrap_or_else(|_| "1,2,3".into());
    for seed in seeds.split(',').map(|s| s.trim().parse::<u64>().unwrap()) {
        let report = harness::run(seed, seconds).await;
        for (at, what) in &report.timeline {
            eprintln!("  [{:>8.3}s] {what}", at.as_secs_f64());
        }
        eprintln!("{}", summary(&report));
        assert!(report.violations.is_empty(), "{}", report.explain());
    }
}

/// Soak runs (`tests/chaos/run.sh`): `CHAOS_RUNS` runs of `CHAOS_SECONDS` from seed
/// `CHAOS_SEED` on, one summary line each appended to `CHAOS_REPORT`; fails at the end if
/// any run found a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak: run through tests/chaos/run.sh"]
async fn soak() {
    let (runs, seconds, first) = (
        env_u64("CHAOS_RUNS", 10),
        env_u64("CHAOS_SECONDS", 60),
        env_u64("CHAOS_SEED", 1),
    );
    let path = std::env::var("CHAOS_REPORT").unwrap_or_else(|_| "chaos-report.txt".into());
    let mut failed = Vec::new();
    for seed in first..first + runs {
        let report = harness::run(seed, seconds).await;
        let line = summary(&report);
        eprintln!("{line}");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
        if !report.violations.is_empty() {
            eprintln!("{}", report.explain());
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds with violations: {failed:?}");
}
