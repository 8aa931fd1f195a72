//! One run: three `metakv serve` processes, [`CLIENTS`] clients on a few hot keys, one watcher
//! per node, and the nemesis; then healing, final reads, the checker and a comparison of
//! every node's copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metakv::{Applied, Client, Consistency, Error, Expect, Kv, WatchEvent};

use crate::checker::{self, Kind, Violation};
use crate::common::rng::Rng;
use crate::common::{ProcCluster, serve_args};
use crate::history::{Call, Event, Outcome, Seen, WatchLog};
use crate::nemesis::{self, Fault};

/// Hot keys: few, so that histories conflict.
pub const KEYS: usize = 5;
pub const CLIENTS: usize = 4;
const BUCKET: &str = "b";
/// How long a client waits for one answer before it counts the outcome unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What one run did and found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub seconds: u64,
    pub events: Vec<Event>,
    /// (when, what): the faults as they were carried out.
    pub timeline: Vec<(Duration, String)>,
    /// Each fault: when it was injected, its kind, and the node it struck (if one).
    pub faults: Vec<(Duration, &'static str, Option<usize>)>,
    pub violations: Vec<Violation>,
    /// Where the nodes' data dirs and logs are (kept, with `history.txt`, when the run
    /// failed).
    pub dir: PathBuf,
}

impl Report {
    pub fn acknowledged_writes(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Written { .. }))
            .count()
    }

    pub fn unknown(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e.outcome, Outcome::Unknown(_)))
            .count()
    }

    /// Per fault: the time from the fault to the first acknowledged write invoked after it
    /// began (how long new writes could not go through), and the slowest acknowledged write
    /// invoked after it that completed within 3 s and before the next fault. Writes sent to
    /// the node the fault struck are left out: a client waits for the node it asked.
    pub fn unavailability(&self) -> Vec<(&'static str, Duration, Duration)> {
        self.faults
            .iter()
            .enumerate()
            .map(|(n, &(at, kind, struck))| {
                let until = self
                    .faults
                    .get(n + 1)
                    .map_or(Duration::MAX, |f| f.0)
                    .min(at + Duration::from_secs(3));
                let acked = |e: &&Event| {
                    e.call.is_write()
                        && matches!(e.outcome, Outcome::Written { .. })
                        && e.invoked >= at
                        && Some(e.node) != struck
                };
                let first = self
                    .events
                    .iter()
                    .filter(acked)
                    .map(|e| e.completed.saturating_sub(at))
                    .min()
                    .unwrap_or(Duration::MAX);
                let slowest = self
                    .events
                    .iter()
                    .filter(acked)
                    .filter(|e| e.completed < until)
                    .map(|e| e.completed - e.invoked)
                    .max()
                    .unwrap_or_default();
                (kind, first, slowest)
            })
            .collect()
    }

    /// The seed, each violation with the operations involved, and the faults around them.
    pub fn explain(&self) -> String {
        let mut s = format!(
            "seed {} ({} s): {} violations; data dirs and logs kept in {}\n",
            self.seed,
            self.seconds,
            self.violations.len(),
            self.dir.display()
        );
        for v in self.violations.iter().take(20) {
            s += &format!("\n{:?} on key {:?}: {}\n", v.kind, v.key, v.message);
            for &i in &v.events {
                s += &format!("  {}\n", self.events[i]);
            }
            let times: Vec<Duration> = v
                .events
                .iter()
                .flat_map(|&i| [self.events[i].invoked, self.events[i].completed])
                .collect();
            let (lo, hi) = match (times.iter().min(), times.iter().max()) {
                (Some(&lo), Some(&hi)) => (
                    lo.saturating_sub(Duration::from_secs(3)),
                    hi + Duration::from_secs(3),
                ),
                _ => (Duration::ZERO, Duration::MAX),
            };
            for (at, what) in self
                .timeline
                .iter()
                .filter(|(at, _)| *at >= lo && *at <= hi)
            {
                s += &format!("  fault [{:>8.3}s] {what}\n", at.as_secs_f64());
            }
        }
        s
    }
}

/// Runs `seconds` of load and faults from `seed`, heals, and checks.
pub async fn run(seed: u64, seconds: u64) -> Report {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let cluster = ProcCluster::start(&dir, 3);
    let addrs: Vec<String> = cluster.procs.iter().map(|p| p.addr.clone()).collect();
    cluster.client().create_bucket(BUCKET).await.unwrap();
    let start = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client(
                i,
                seed,
                addrs.clone(),
                start,
                Arc::clone(&stop_clients),
            ))
        })
        .collect();
    let watches: Vec<Arc<Mutex<WatchLog>>> = (0..addrs.len())
        .map(|node| {
            Arc::new(Mutex::new(WatchLog {
                node,
                ..WatchLog::default()
            }))
        })
        .collect();
    let watchers: Vec<_> = watches
        .iter()
        .enumerate()
        .map(|(i, log)| {
            tokio::spawn(watcher(
                addrs[i].clone(),
                Arc::clone(log),
                Arc::clone(&stop_watchers),
            ))
        })
        .collect();
    let schedule = nemesis::schedule(seed, run_for);
    let (cluster, timeline, faults) = nemesis(cluster, dir.clone(), schedule, start).await;
    tokio::time::sleep(run_for.saturating_sub(start.elapsed())).await;
    stop_clients.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    for c in clients {
        events.extend(c.await.unwrap());
    }
    events.sort_by_key(|e| e.invoked);
    // Healed: every fault ended before the nemesis returned. Every node catches up.
    let mut violations = Vec::new();
    converge(&cluster, &mut violations).await;
    let finals = final_reads(&cluster).await;
    // Watchers catch up to the final records, then stop.
    let newest = finals.values().flatten().map(|s| s.rev).max().unwrap_or(0);
    for _ in 0..100 {
        let behind = watches.iter().any(|w| {
            let w = w.lock().unwrap();
            w.compacted.is_empty() && w.events.last().map_or(0, |(_, s)| s.rev) < newest
        });
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_watchers.store(true, Ordering::Relaxed);
    for w in watchers {
        w.await.unwrap();
    }
    let watches: Vec<WatchLog> = watches.iter().map(|w| w.lock().unwrap().clone()).collect();
    compare_copies(&addrs, &mut violations).await;
    violations.extend(checker::check(&events, &finals, &watches));
    drop(cluster);
    let dir = if violations.is_empty() {
        drop(tmp);
        dir
    } else {
        // The whole history beside the nodes' files, for a look past the first violations.
        let mut text: String = events.iter().map(|e| format!("{e}\n")).collect();
        for (at, what) in &timeline {
            text += &format!("fault [{:>8.3}s] {what}\n", at.as_secs_f64());
        }
        for w in &watches {
            text += &format!("watch of node {}: {:?}\n", w.node + 1, w);
        }
        let _ = std::fs::write(dir.join("history.txt"), text);
        tmp.keep()
    };
    Report {
        seed,
        seconds,
        events,
        timeline,
        faults,
        violations,
        dir,
    }
}

async fn perform(client: &Client, call: &Call) -> Outcome {
    let written = |r: metakv::Result<Applied>| match r {
        Ok(Applied::Written { rev }) => Outcome::Written { rev },
        Ok(Applied::Conflict { current }) => Outcome::Conflict { current },
        Ok(Applied::NotFound) => Outcome::NotFound,
        Ok(other) => Outcome::Unknown(format!("answered {other:?}")),
        // Refused before it was proposed, or at apply: it changed nothing.
        Err(Error::Rejected(r)) => Outcome::Failed(r.message),
        Err(e) => Outcome::Unknown(e.to_string()),
    };
    match call {
        Call::Put { key, value, expect } => written(
            client
                .put(BUCKET, key.as_bytes(), value.as_bytes(), *expect)
                .await,
        ),
        Call::Delete { key, expect } => {
            written(client.delete(BUCKET, key.as_bytes(), *expect).await)
        }
        Call::Get { key, linearizable } => {
            let consistency = if *linearizable {
                Consistency::Linearizable
            } else {
                Consistency::Local
            };
            match client
                .get_with(BUCKET, key.as_bytes(), consistency, true)
                .await
            {
                Ok(r) => Outcome::Read(r.map(|r| Seen {
                    value: String::from_utf8_lossy(&r.value).into_owned(),
                    rev: r.rev,
                    deleted: r.deleted,
                })),
                Err(e) => Outcome::Unknown(e.to_string()),
            }
        }
    }
}

/// One client: puts (plain, on a revision it saw, on absence), deletes (plain, on a
/// revision), linearizable and local gets, on the hot keys, until told to stop.
async fn client(
    i: usize,
    seed: u64,
    mut endpoints: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Event> {
    let mut rng = Rng::new(
        seed.wrapping_mul(0x100_0000_01b3)
            .wrapping_add(i as u64 + 1),
    );
    let node = i % endpoints.len();
    endpoints.rotate_left(node);
    let client = Client::new(endpoints, "metakv").with_timeout(CLIENT_TIMEOUT);
    let mut last_rev = [1u64; KEYS];
    let mut out = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS);
        let key = format!("k{k}");
        seq += 1;
        let value = format!("c{i}-{seq}");
        let call = match rng.below(100) {
            0..30 => Call::Put {
                key,
                value,
                expect: Expect::Any,
            },
            30..40 => Call::Put {
                key,
                value,
                expect: Expect::Rev(last_rev[k]),
            },
            40..50 => Call::Put {
                key,
                value,
                expect: Expect::Absent,
            },
            50..60 => Call::Delete {
                key,
                expect: Expect::Any,
            },
            60..65 => Call::Delete {
                key,
                expect: Expect::Rev(last_rev[k]),
            },
            65..90 => Call::Get {
                key,
                linearizable: true,
            },
            _ => Call::Get {
                key,
                linearizable: false,
            },
        };
        let invoked = start.elapsed();
        let outcome = perform(&client, &call).await;
        let completed = start.elapsed();
        match &outcome {
            Outcome::Written { rev } | Outcome::Conflict { current: Some(rev) } => {
                last_rev[k] = *rev
            }
            Outcome::Read(Some(s)) => last_rev[k] = s.rev,
            _ => {}
        }
        let failed_read = !call.is_write() && matches!(outcome, Outcome::Unknown(_));
        let pause = matches!(outcome, Outcome::Unknown(_));
        if !failed_read {
            out.push(Event {
                client: i,
                node,
                call,
                outcome,
                invoked,
                completed,
            });
        }
        if pause {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// One node's watcher: it watches the bucket on that node only, and when the node goes away
/// it reconnects there and goes on from the last revision it delivered.
async fn watcher(addr: String, log: Arc<Mutex<WatchLog>>, stop: Arc<AtomicBool>) {
    let mut from = 1;
    while !stop.load(Ordering::Relaxed) {
        let client = Client::new(vec![addr.clone()], "metakv").with_timeout(CLIENT_TIMEOUT);
        let mut watch = client.watch(BUCKET, b"", from);
        while !stop.load(Ordering::Relaxed) {
            // The timeout only lets the loop look at `stop`; a cancelled poll changes nothing.
            match tokio::time::timeout(Duration::from_millis(1500), watch.next()).await {
                Err(_) => {}
                Ok(Ok(WatchEvent::Change { key, record })) => {
                    from = record.rev + 1;
                    log.lock().unwrap().events.push((
                        String::from_utf8_lossy(&key).into_owned(),
                        Seen {
                            value: String::from_utf8_lossy(&record.value).into_owned(),
                            rev: record.rev,
                            deleted: record.deleted,
                        },
                    ));
                }
                Ok(Ok(WatchEvent::Compacted { floor })) => {
                    let mut log = log.lock().unwrap();
                    let at = log.events.len();
                    log.compacted.push((at, floor));
                    from = floor + 1;
                    break;
                }
                Ok(Err(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}

/// Carries out the schedule on its own task; returns the cluster, healed, and the timeline.
async fn nemesis(
    cluster: ProcCluster,
    dir: PathBuf,
    schedule: Vec<(Duration, Fault)>,
    start: Instant,
) -> (
    ProcCluster,
    Vec<(Duration, String)>,
    Vec<(Duration, &'static str, Option<usize>)>,
) {
    let task = tokio::spawn(async move {
        let mut cluster = cluster;
        let (mut timeline, mut faults) = (Vec::new(), Vec::new());
        for (at, fault) in schedule {
            tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
            let (injected, struck, what) = inject(&mut cluster, &dir, fault, start).await;
            timeline.push((injected, what));
            faults.push((injected, fault.kind(), struck));
        }
        (cluster, timeline, faults)
    });
    task.await.unwrap()
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// Restarts node `i` (0-based) on its files and address.
fn restart(cluster: &mut ProcCluster, dir: &std::path::Path, i: usize) {
    let id = i as u64 + 1;
    let args = [
        "--id".to_owned(),
        id.to_string(),
        "--listen".to_owned(),
        cluster.procs[i].addr.clone(),
        "--data-dir".to_owned(),
        dir.join(format!("node{id}")).display().to_string(),
    ];
    cluster.procs[i] = tokio::task::block_in_place(|| serve_args(dir, id, &args));
}

/// Carries out one fault and heals it; returns when it was injected, the node it struck (a
/// kill or a pause), and what it did.
async fn inject(
    cluster: &mut ProcCluster,
    dir: &std::path::Path,
    fault: Fault,
    start: Instant,
) -> (Duration, Option<usize>, String) {
    let leader = cluster.leader().await;
    let follower = (leader + 1) % cluster.procs.len();
    let injected = start.elapsed();
    let what = match fault {
        Fault::KillLeader { down } | Fault::KillFollower { down } => {
            let i = if matches!(fault, Fault::KillLeader { .. }) {
                leader
            } else {
                follower
            };
            let child = &mut cluster.procs[i].child;
            let _ = child.kill();
            let _ = child.wait();
            tokio::time::sleep(down).await;
            restart(cluster, dir, i);
            format!(
                "{}: node {} killed, restarted after {down:?}",
                fault.kind(),
                i + 1
            )
        }
        Fault::PauseLeader { frozen } | Fault::PauseFollower { frozen } => {
            let i = if matches!(fault, Fault::PauseLeader { .. }) {
                leader
            } else {
                follower
            };
            let pid = cluster.procs[i].child.id();
            signal(pid, "-STOP");
            tokio::time::sleep(frozen).await;
            signal(pid, "-CONT");
            format!("{}: node {} frozen for {frozen:?}", fault.kind(), i + 1)
        }
        Fault::Gc => {
            let client = cluster.client().with_timeout(Duration::from_secs(5));
            let outcome = match client.gc_run(false, Some(0)).await {
                Ok(job) => match client.gc_wait(job, Duration::from_millis(100)).await {
                    Ok(record) => format!("job {job}: {:?}", record.outcome),
                    Err(e) => format!("job {job}: {e}"),
                },
                Err(e) => e.to_string(),
            };
            format!("gc: {outcome}")
        }
        Fault::Compact { nth } => {
            let client = Client::new(vec![cluster.procs[nth].addr.clone()], "metakv")
                .with_timeout(Duration::from_secs(10));
            let outcome = match client.compact_node().await {
                Ok(c) => format!("{} -> {} bytes", c.bytes_before, c.bytes_after),
                Err(e) => e.to_string(),
            };
            format!("compact: node {}: {outcome}", nth + 1)
        }
        Fault::Backup { nth } => {
            let client = Client::new(vec![cluster.procs[nth].addr.clone()], "metakv")
                .with_timeout(Duration::from_secs(10));
            let file = dir.join(format!("backup-{nth}.mkva"));
            let outcome = match client.backup(&file, |_, _| {}).await {
                Ok(info) => format!("{} bytes at revision {}", info.bytes, info.rev),
                Err(e) => e.to_string(),
            };
            let _ = std::fs::remove_file(&file);
            format!("backup through node {}: {outcome}", nth + 1)
        }
    };
    let struck = match fault {
        Fault::KillLeader { .. } | Fault::PauseLeader { .. } => Some(leader),
        Fault::KillFollower { .. } | Fault::PauseFollower { .. } => Some(follower),
        _ => None,
    };
    (injected, struck, what)
}

/// Waits (30 s at most) until every node has applied everything the leader has in its log.
async fn converge(cluster: &ProcCluster, violations: &mut Vec<Violation>) {
    let leader = cluster.leader().await;
    let status = |i: usize| {
        let addr = cluster.procs[i].addr.clone();
        async move {
            Client::new(vec![addr], "metakv")
                .with_timeout(Duration::from_secs(2))
                .status()
                .await
        }
    };
    let mut seen = Vec::new();
    for _ in 0..300 {
        let Ok(l) = status(leader).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.clear();
        for i in 0..cluster.procs.len() {
            seen.push(status(i).await.map(|s| s.applied).unwrap_or(0));
        }
        if seen.iter().all(|&a| a >= l.last_log_index) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    violations.push(Violation {
        kind: Kind::Diverged,
        key: String::new(),
        message: format!("the nodes did not catch up within 30 s after healing: applied {seen:?}"),
        events: Vec::new(),
    });
}

/// Every key's record after healing, read linearizably (tombstones included).
async fn final_reads(cluster: &ProcCluster) -> BTreeMap<String, Option<Seen>> {
    let client = cluster.client().with_timeout(Duration::from_secs(5));
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let mut last = None;
        for _ in 0..20 {
            match client
                .get_with(BUCKET, key.as_bytes(), Consistency::Linearizable, true)
                .await
            {
                Ok(r) => {
                    last = Some(r.map(|r| Seen {
                        value: String::from_utf8_lossy(&r.value).into_owned(),
                        rev: r.rev,
                        deleted: r.deleted,
                    }));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        out.insert(
            key.clone(),
            last.expect("a final read answers within 5 s after healing"),
        );
    }
    out
}

/// Every node's own copy of the bucket (tombstones included) must be the same, and every
/// node's `check` clean.
async fn compare_copies(addrs: &[String], violations: &mut Vec<Violation>) {
    let mut copies = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let client =
            Client::new(vec![addr.clone()], "metakv").with_timeout(Duration::from_secs(10));
        let rows: Vec<_> = crate::common::local_records(&client, BUCKET)
            .await
            .into_iter()
            .map(|(k, r)| (k, r.rev, r.deleted, r.value))
            .collect();
        match client.check_node().await {
            Ok(c) if c.ok => {}
            Ok(c) => violations.push(Violation {
                kind: Kind::Diverged,
                key: String::new(),
                message: format!("node {}'s check found problems: {:?}", i + 1, c.problems),
                events: Vec::new(),
            }),
            Err(e) => violations.push(Violation {
                kind: Kind::Diverged,
                key: String::new(),
                message: format!("node {}'s check failed: {e}", i + 1),
                events: Vec::new(),
            }),
        }
        copies.push(rows);
    }
    for (i, c) in copies.iter().enumerate().skip(1) {
        if *c != copies[0] {
            violations.push(Violation {
                kind: Kind::Diverged,
                key: String::new(),
                message: format!(
                    "node {}'s copy ({} rows) differs from node 1's ({} rows)",
                    i + 1,
                    c.len(),
                    copies[0].len()
                ),
                events: Vec::new(),
            });
        }
    }
}
