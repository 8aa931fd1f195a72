//! One run: three `metakv serve` processes behind proxies, [`CLIENTS`] clients on a few hot
//! keys, one watcher per node, a cold bucket that is paused and resumed, and the nemesis;
//! then healing, final reads, the checker and a comparison of every node's copy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metakv::{Applied, Client, ClientCreds, Consistency, Error, Expect, Kv, WatchEvent};

use crate::checker::{self, Kind, Violation};
use crate::cluster::{DISK_SLOT, Nodes};
use crate::common::rng::Rng;
use crate::history::{Call, Event, Outcome, Seen, WatchLog};
use crate::nemesis::{self, Cut, Fault};

/// Hot keys: few, so that histories conflict.
pub const KEYS: usize = 5;
pub const CLIENTS: usize = 4;
const BUCKET: &str = "b";
/// A bucket nobody writes to after it is loaded, paused to an archive and resumed.
const COLD: &str = "cold";
const COLD_RECORDS: usize = 300;
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
    /// the node the fault struck are left out: a client waits for the node it asked. The
    /// first is `None` when no write went through after the fault (printed `-`).
    pub fn unavailability(&self) -> Vec<(&'static str, Option<Duration>, Duration)> {
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
                    .min();
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
    let nodes = Nodes::start(&dir, 3).await;
    let addrs: Vec<String> = nodes.slots.iter().map(|s| s.listen.clone()).collect();
    let client = nodes.client();
    client.create_bucket(BUCKET).await.unwrap();
    let cold = load_cold(&client).await;
    let start = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_watchers = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client_task(
                i,
                seed,
                nodes.creds().clone(),
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
                nodes.creds().clone(),
                addrs[i].clone(),
                Arc::clone(log),
                Arc::clone(&stop_watchers),
            ))
        })
        .collect();
    let schedule = nemesis::schedule(seed, run_for);
    let (nodes, timeline, faults, mut violations) = nemesis(nodes, schedule, start).await;
    tokio::time::sleep(run_for.saturating_sub(start.elapsed())).await;
    stop_clients.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    for c in clients {
        events.extend(c.await.unwrap());
    }
    events.sort_by_key(|e| e.invoked);
    // Healed: every fault ended before the nemesis returned. Every node catches up.
    converge(&nodes, &mut violations).await;
    let finals = final_reads(&nodes).await;
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
    compare_copies(&nodes, &cold, &mut violations).await;
    violations.extend(checker::check(&events, &finals, &watches));
    // `CHAOS_KEEP` keeps a clean run's files too, for a look at its timings.
    let dir = if violations.is_empty() && std::env::var_os("CHAOS_KEEP").is_none() {
        drop(nodes);
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
        // The tmpfs goes with the nodes: its files are copied out first.
        let disk = nodes.data_dir(DISK_SLOT);
        drop(nodes);
        let _ = std::process::Command::new("cp")
            .arg("-a")
            .arg(&disk)
            .arg(dir.join(format!("slot{DISK_SLOT}.kept")))
            .status();
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

/// Fills the cold bucket; returns its records as written.
async fn load_cold(client: &Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    client.create_bucket(COLD).await.unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = (0..COLD_RECORDS)
        .map(|i| {
            (
                format!("user/{i:04}").into_bytes(),
                vec![b'a' + (i % 26) as u8; 512],
            )
        })
        .collect();
    for chunk in records.chunks(50) {
        let puts = chunk
            .iter()
            .map(|(k, v)| client.put(COLD, k, v, Expect::Any));
        for r in futures_util::future::join_all(puts).await {
            r.unwrap();
        }
    }
    records
}

async fn perform(client: &Client, call: &Call) -> Outcome {
    let written = |r: metakv::Result<Applied>| match r {
        Ok(Applied::Written { rev }) => Outcome::Written { rev },
        Ok(Applied::Conflict { current }) => Outcome::Conflict { current },
        Ok(Applied::NotFound) => Outcome::NotFound,
        Ok(other) => Outcome::Unknown(format!("answered {other:?}")),
        // Refused before it was proposed, or at apply: it changed nothing.
        Err(Error::Rejected(r)) => Outcome::Failed(r.message),
        // The library's promise: `Unavailable` means nothing was sent or proposed (a write
        // whose outcome is unknown is `Ambiguous`). The checker holds it to that: a write
        // answered `Unavailable` that shows up in a read is a violation.
        Err(Error::Unavailable(m)) => Outcome::Failed(format!("unavailable: {m}")),
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
        Call::Get {
            key, linearizable, ..
        } => match client
            .get_with(BUCKET, key.as_bytes(), consistency(*linearizable), true)
            .await
        {
            Ok(r) => Outcome::Read(r.map(|r| seen(&r))),
            Err(e) => Outcome::Unknown(e.to_string()),
        },
    }
}

fn consistency(linearizable: bool) -> Consistency {
    if linearizable {
        Consistency::Linearizable
    } else {
        Consistency::Local
    }
}

fn seen(r: &metakv::Record) -> Seen {
    Seen {
        value: String::from_utf8_lossy(&r.value).into_owned(),
        rev: r.rev,
        deleted: r.deleted,
    }
}

/// A scan of the whole bucket (one page: it holds every hot key), as one read of each hot
/// key at the scan's times; `None` when it failed.
async fn scan(client: &Client, linearizable: bool) -> Option<Vec<(Call, Outcome)>> {
    let page = client
        .scan(BUCKET, b"", None, 1000, true, consistency(linearizable))
        .await
        .ok()?;
    let found: BTreeMap<String, Seen> = page
        .items
        .iter()
        .map(|(k, r)| (String::from_utf8_lossy(k).into_owned(), seen(r)))
        .collect();
    Some(
        (0..KEYS)
            .map(|k| {
                let key = format!("k{k}");
                let outcome = Outcome::Read(found.get(&key).cloned());
                let call = Call::Get {
                    key,
                    linearizable,
                    scan: true,
                };
                (call, outcome)
            })
            .collect(),
    )
}

/// One client: puts (plain, on a revision it saw, on absence), deletes (plain, on a
/// revision), linearizable and local gets and scans, on the hot keys, until told to stop.
async fn client_task(
    i: usize,
    seed: u64,
    creds: ClientCreds,
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
    let client = Client::new(endpoints, "metakv", &creds)
        .unwrap()
        .with_timeout(CLIENT_TIMEOUT);
    let mut last_rev = [1u64; KEYS];
    let mut out = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS);
        let key = format!("k{k}");
        seq += 1;
        let value = format!("c{i}-{seq}");
        // One operation, or a scan (one read of each hot key at the scan's times).
        let draw = rng.below(100);
        let call = match draw {
            0..30 => Some(Call::Put {
                key,
                value,
                expect: Expect::Any,
            }),
            30..40 => Some(Call::Put {
                key,
                value,
                expect: Expect::Rev(last_rev[k]),
            }),
            40..50 => Some(Call::Put {
                key,
                value,
                expect: Expect::Absent,
            }),
            50..60 => Some(Call::Delete {
                key,
                expect: Expect::Any,
            }),
            60..65 => Some(Call::Delete {
                key,
                expect: Expect::Rev(last_rev[k]),
            }),
            65..85 => Some(Call::Get {
                key,
                linearizable: true,
                scan: false,
            }),
            85..92 => Some(Call::Get {
                key,
                linearizable: false,
                scan: false,
            }),
            _ => None,
        };
        let invoked = start.elapsed();
        let done = match call {
            Some(call) => {
                let outcome = perform(&client, &call).await;
                vec![(call, outcome)]
            }
            // A failed scan is a failed read: nothing to record.
            None => scan(&client, draw < 97).await.unwrap_or_default(),
        };
        let completed = start.elapsed();
        let failed = done.is_empty() || done.iter().any(|(_, o)| matches!(o, Outcome::Unknown(_)));
        for (call, outcome) in done {
            let k: usize = call.key()[1..].parse().expect("hot keys are k0..k4");
            match &outcome {
                Outcome::Written { rev } | Outcome::Conflict { current: Some(rev) } => {
                    last_rev[k] = *rev
                }
                Outcome::Read(Some(s)) => last_rev[k] = s.rev,
                _ => {}
            }
            // A read that did not answer saw nothing.
            if call.is_write() || !matches!(outcome, Outcome::Unknown(_)) {
                out.push(Event {
                    client: i,
                    node,
                    call,
                    outcome,
                    invoked,
                    completed,
                });
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// One node's watcher: it watches the bucket on that node only, and when the node goes away
/// it reconnects there and goes on from the last revision it delivered.
async fn watcher(
    creds: ClientCreds,
    addr: String,
    log: Arc<Mutex<WatchLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut from = 1;
    while !stop.load(Ordering::Relaxed) {
        let client = Client::new(vec![addr.clone()], "metakv", &creds)
            .unwrap()
            .with_timeout(CLIENT_TIMEOUT);
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

type Timeline = Vec<(Duration, String)>;
type Faults = Vec<(Duration, &'static str, Option<usize>)>;

/// Carries out the schedule on its own task; returns the cluster, healed, the timeline, and
/// what did not heal (a node that would not restart, a bucket that would not come back).
async fn nemesis(
    nodes: Nodes,
    schedule: Vec<(Duration, Fault)>,
    start: Instant,
) -> (Nodes, Timeline, Faults, Vec<Violation>) {
    let task = tokio::spawn(async move {
        let mut nodes = nodes;
        let (mut timeline, mut faults, mut unhealed) = (Vec::new(), Vec::new(), Vec::new());
        for (at, fault) in schedule {
            tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
            let Some(leader) = nodes.healed().await else {
                // Kept as a violation (with the files), not a panic that would lose them.
                let at = start.elapsed();
                unhealed.push(Violation {
                    kind: Kind::NotHealed,
                    key: String::new(),
                    message: format!(
                        "no member led for 30 s before {} at {at:?}; no further faults",
                        fault.kind()
                    ),
                    events: Vec::new(),
                });
                timeline.push((at, "no leader for 30 s: the nemesis stops".to_owned()));
                break;
            };
            let injected = start.elapsed();
            let (struck, what) = match inject(&mut nodes, fault, leader).await {
                Ok(done) => done,
                Err(why) => {
                    unhealed.push(Violation {
                        kind: Kind::NotHealed,
                        key: String::new(),
                        message: format!("{} at {injected:?}: {why}", fault.kind()),
                        events: Vec::new(),
                    });
                    (None, format!("{}: did not heal: {why}", fault.kind()))
                }
            };
            timeline.push((injected, what));
            faults.push((injected, fault.kind(), struck));
        }
        (nodes, timeline, faults, unhealed)
    });
    task.await.unwrap()
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// Carries out one fault on a healed cluster led by `leader` and heals it; returns the slot it
/// struck (a kill, a pause, an isolated node) and what it did, or why the cluster did not heal.
async fn inject(
    nodes: &mut Nodes,
    fault: Fault,
    leader: usize,
) -> Result<(Option<usize>, String), String> {
    let follower = nodes.follower_of(leader);
    let kind = fault.kind();
    let (struck, what) = match fault {
        Fault::KillLeader { down } | Fault::KillFollower { down } => {
            let i = if matches!(fault, Fault::KillLeader { .. }) {
                leader
            } else {
                follower
            };
            nodes.kill(i);
            tokio::time::sleep(down).await;
            nodes.restart(i).await?;
            (
                Some(i),
                format!(
                    "{kind}: node {} killed, restarted after {down:?}",
                    nodes.slots[i].id
                ),
            )
        }
        Fault::PauseLeader { frozen } | Fault::PauseFollower { frozen } => {
            let i = if matches!(fault, Fault::PauseLeader { .. }) {
                leader
            } else {
                follower
            };
            let pid = nodes.slots[i].proc.as_ref().map_or(0, |p| p.child.id());
            signal(pid, "-STOP");
            tokio::time::sleep(frozen).await;
            signal(pid, "-CONT");
            (
                Some(i),
                format!("{kind}: node {} frozen for {frozen:?}", nodes.slots[i].id),
            )
        }
        Fault::Gc => {
            let client = nodes.client().with_timeout(Duration::from_secs(5));
            let outcome = match client.gc_run(false, Some(0)).await {
                // A job that never ends is a cluster that did not heal.
                Ok(job) => match tokio::time::timeout(
                    Duration::from_secs(60),
                    client.gc_wait(job, Duration::from_millis(100)),
                )
                .await
                {
                    Ok(Ok(record)) => format!("job {job}: {:?}", record.outcome),
                    Ok(Err(e)) => format!("job {job}: {e}"),
                    Err(_) => return Err(format!("GC job {job} did not end within 60 s")),
                },
                Err(e) => e.to_string(),
            };
            (None, format!("gc: {outcome}"))
        }
        Fault::Compact { nth } => {
            let slot = nodes.nth_member(nth);
            let client = nodes.client_of(slot, Duration::from_secs(10));
            let outcome = match client.compact_node().await {
                Ok(c) => format!("{} -> {} bytes", c.bytes_before, c.bytes_after),
                Err(e) => e.to_string(),
            };
            (
                None,
                format!("compact: node {}: {outcome}", nodes.slots[slot].id),
            )
        }
        Fault::Backup { nth } => {
            let slot = nodes.nth_member(nth);
            let client = nodes.client_of(slot, Duration::from_secs(10));
            let file = nodes.dir.join(format!("backup-{nth}.mkva"));
            let outcome = match client.backup(&file, |_, _| {}).await {
                Ok(info) => format!("{} bytes at revision {}", info.bytes, info.rev),
                Err(e) => e.to_string(),
            };
            let _ = std::fs::remove_file(&file);
            (
                None,
                format!("backup through node {}: {outcome}", nodes.slots[slot].id),
            )
        }
        Fault::Partition { cut, held } => {
            let others: Vec<usize> = nodes.members().filter(|&s| s != leader).collect();
            let (struck, desc) = match cut {
                Cut::IsolateLeader => {
                    nodes.net.cut(&[leader], &others);
                    nodes.net.cut(&others, &[leader]);
                    (leader, "isolated")
                }
                Cut::IsolateFollower => {
                    let rest: Vec<usize> = nodes.members().filter(|&s| s != follower).collect();
                    nodes.net.cut(&[follower], &rest);
                    nodes.net.cut(&rest, &[follower]);
                    (follower, "isolated")
                }
                Cut::LeaderMute => {
                    nodes.net.cut(&[leader], &others);
                    (leader, "unheard by the others")
                }
                Cut::LeaderDeaf => {
                    nodes.net.cut(&others, &[leader]);
                    (leader, "deaf to the others")
                }
                Cut::Bridge => {
                    nodes.net.cut(&[leader], &[follower]);
                    nodes.net.cut(&[follower], &[leader]);
                    (leader, "cut from one follower")
                }
            };
            tokio::time::sleep(held).await;
            nodes.net.heal();
            (
                Some(struck),
                format!(
                    "{kind}: node {} {desc} for {held:?}",
                    nodes.slots[struck].id
                ),
            )
        }
        Fault::Delay { delay, held } => {
            nodes.net.set_delay(delay);
            tokio::time::sleep(held).await;
            nodes.net.heal();
            (
                None,
                format!("{kind}: {delay:?} between nodes for {held:?}"),
            )
        }
        Fault::AddRemove { held } => {
            let slot = nodes.add().await?;
            let id = nodes.slots[slot].id;
            tokio::time::sleep(held).await;
            remove(nodes, id).await?;
            nodes.kill(slot);
            nodes.slots[slot].member = false;
            (
                None,
                format!("{kind}: node {id} joined, removed after {held:?}"),
            )
        }
        Fault::JoinTogether { held } => {
            let slots = nodes.add_together(2).await?;
            let ids: Vec<u64> = slots.iter().map(|&s| nodes.slots[s].id).collect();
            tokio::time::sleep(held).await;
            let (a, b) = tokio::join!(remove(nodes, ids[0]), remove(nodes, ids[1]));
            a?;
            b?;
            for slot in slots {
                nodes.kill(slot);
                nodes.slots[slot].member = false;
            }
            (
                None,
                format!(
                    "{kind}: nodes {} and {} joined together, removed together after {held:?}",
                    ids[0], ids[1]
                ),
            )
        }
        Fault::Replace => {
            let old = nodes.slots[follower].id;
            nodes.kill(follower);
            nodes.slots[follower].member = false;
            wipe(&nodes.data_dir(follower)).map_err(|e| format!("wiping: {e}"))?;
            remove(nodes, old).await?;
            let new = nodes.fresh_id();
            nodes.slots[follower].id = new;
            let seed = nodes.slots[leader].advertise.clone();
            let mut last = String::new();
            for _ in 0..20 {
                match nodes.launch(follower, Some(seed.clone())) {
                    Ok(()) => break,
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if !nodes.slots[follower].member {
                return Err(format!(
                    "node {new} did not join in node {old}'s place: {last}"
                ));
            }
            (
                Some(follower),
                format!("{kind}: node {old} wiped and removed, node {new} joined in its place"),
            )
        }
        Fault::Hibernate { kill_after, down } => {
            let outcome = hibernate(nodes, kill_after, down).await?;
            (Some(leader), format!("{kind}: {outcome}"))
        }
        Fault::FullDisk { held } => {
            let data = nodes.data_dir(DISK_SLOT);
            if let Err(e) = &nodes.disk {
                (None, format!("{kind}: skipped (no tmpfs: {e})"))
            } else {
                let filler = tokio::task::block_in_place(|| crate::common::disk::fill(&data, 0));
                tokio::time::sleep(held).await;
                let _ = std::fs::remove_file(&filler);
                let stopped = !nodes.running(DISK_SLOT);
                if stopped {
                    nodes.kill(DISK_SLOT);
                    nodes.restart(DISK_SLOT).await?;
                }
                (
                    Some(DISK_SLOT),
                    format!(
                        "{kind}: node {}'s disk full for {held:?}{}",
                        nodes.slots[DISK_SLOT].id,
                        if stopped {
                            "; it stopped and was restarted"
                        } else {
                            ""
                        }
                    ),
                )
            }
        }
    };
    Ok((struck, what))
}

/// Removes member `id`, retrying while the cluster elects (20 s at most).
async fn remove(nodes: &Nodes, id: u64) -> Result<(), String> {
    let client = nodes.client().with_timeout(Duration::from_secs(5));
    let mut last = String::new();
    for _ in 0..40 {
        match client.remove_node(id).await {
            Ok(()) => return Ok(()),
            // An earlier attempt removed it and its answer was lost.
            Err(e) if e.rejection_kind() == Some(metakv::RejectionKind::NotFound) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("node {id} could not be removed: {last}"))
}

/// Removes everything in `dir` (it may be a mount point, which stays).
fn wipe(dir: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Pauses the cold bucket and resumes it, killing the leader `kill_after` into each
/// operation; ends with the bucket active again, or says why it is not.
async fn hibernate(
    nodes: &mut Nodes,
    kill_after: Duration,
    down: Duration,
) -> Result<String, String> {
    let archive = nodes.dir.join("archive").display().to_string();
    let mut story = Vec::new();
    for resume in [false, true] {
        let client = nodes.client().with_timeout(Duration::from_secs(5));
        let started = if resume {
            client.start_resume(COLD, None).await
        } else {
            client.start_pause(COLD, &archive).await
        };
        let verb = if resume { "resume" } else { "pause" };
        story.push(match &started {
            Ok(op) => format!("{verb} op {op} started"),
            Err(e) => format!("{verb} refused: {e}"),
        });
        if started.is_ok() {
            tokio::time::sleep(kill_after).await;
            let leader = nodes.leader().await;
            nodes.kill(leader);
            tokio::time::sleep(down).await;
            nodes.restart(leader).await?;
            story.push(format!("leader {} killed", nodes.slots[leader].id));
        }
        let state = settle(nodes).await?;
        story.push(format!("settled {}", state.as_str()));
        if state == metakv::BucketState::Active {
            if resume {
                break;
            }
            // The pause was rolled back: the bucket serves again and there is nothing to resume.
            return Ok(story.join(", "));
        }
    }
    // A resume interrupted and rolled back leaves the bucket paused: resume it, unharmed.
    for _ in 0..3 {
        if settle(nodes).await? == metakv::BucketState::Active {
            return Ok(story.join(", "));
        }
        let client = nodes.client().with_timeout(Duration::from_secs(5));
        match client.resume_bucket(COLD, None).await {
            Ok(_) => story.push("resumed again".into()),
            Err(e) => story.push(format!("resume again: {e}")),
        }
    }
    match settle(nodes).await? {
        metakv::BucketState::Active => Ok(story.join(", ")),
        other => Err(format!(
            "the cold bucket stayed {}: {}",
            other.as_str(),
            story.join(", ")
        )),
    }
}

/// Waits (30 s at most) until the cold bucket has no operation running and is active or
/// paused; returns which.
async fn settle(nodes: &Nodes) -> Result<metakv::BucketState, String> {
    let client = nodes.client().with_timeout(Duration::from_secs(2));
    let mut last = String::new();
    for _ in 0..150 {
        match client.hibernation(COLD).await {
            Ok(h)
                if h.running.is_none()
                    && matches!(
                        h.state,
                        metakv::BucketState::Active | metakv::BucketState::Paused
                    ) =>
            {
                return Ok(h.state);
            }
            Ok(h) => last = format!("{:?}", h.state),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the cold bucket did not settle within 30 s: {last}"
    ))
}

/// Waits (30 s at most) until every member has applied everything the leader has in its log.
async fn converge(nodes: &Nodes, violations: &mut Vec<Violation>) {
    let mut seen = Vec::new();
    for _ in 0..300 {
        let Some(leader) = nodes.try_leader().await else {
            violations.push(Violation {
                kind: Kind::NotHealed,
                key: String::new(),
                message: "no member led for 30 s after the faults ended".into(),
                events: Vec::new(),
            });
            return;
        };
        let Some(l) = nodes.status(leader).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        seen.clear();
        for s in nodes.members() {
            seen.push(nodes.status(s).await.map_or(0, |s| s.applied));
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
async fn final_reads(nodes: &Nodes) -> BTreeMap<String, Option<Seen>> {
    let client = nodes.client().with_timeout(Duration::from_secs(5));
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
                    last = Some(r.map(|r| seen(&r)));
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

/// Every member's own copy of the hot bucket (tombstones included) must be the same, every
/// member's copy of the cold bucket must be what was loaded, and every member's `check`
/// clean.
async fn compare_copies(
    nodes: &Nodes,
    cold: &[(Vec<u8>, Vec<u8>)],
    violations: &mut Vec<Violation>,
) {
    let diverged = |message: String| Violation {
        kind: Kind::Diverged,
        key: String::new(),
        message,
        events: Vec::new(),
    };
    let mut copies = Vec::new();
    for s in nodes.members() {
        let id = nodes.slots[s].id;
        let client = nodes.client_of(s, Duration::from_secs(10));
        // A copy that cannot be read is a violation with the run's timeline, not a panic
        // that loses it.
        let (hot, cold_copy) = match (
            crate::common::try_local_records(&client, BUCKET).await,
            crate::common::try_local_records(&client, COLD).await,
        ) {
            (Ok(hot), Ok(cold_copy)) => (hot, cold_copy),
            (Err(e), _) | (_, Err(e)) => {
                violations.push(diverged(format!("node {id}'s copy cannot be read: {e}")));
                continue;
            }
        };
        let rows: Vec<_> = hot
            .into_iter()
            .map(|(k, r)| (k, r.rev, r.deleted, r.value))
            .collect();
        let cold_rows: Vec<(Vec<u8>, Vec<u8>)> = cold_copy
            .into_iter()
            .filter(|(_, r)| !r.deleted)
            .map(|(k, r)| (k, r.value))
            .collect();
        if cold_rows != cold {
            violations.push(Violation {
                kind: Kind::LostWrite,
                key: String::new(),
                message: format!(
                    "node {id}'s cold bucket holds {} records, not the {} loaded (or other values)",
                    cold_rows.len(),
                    cold.len()
                ),
                events: Vec::new(),
            });
        }
        match client.check_node().await {
            Ok(c) if c.ok => {}
            Ok(c) => violations.push(diverged(format!(
                "node {id}'s check found problems: {:?}",
                c.problems
            ))),
            Err(e) => violations.push(diverged(format!("node {id}'s check failed: {e}"))),
        }
        copies.push((id, rows));
    }
    for (id, c) in copies.iter().skip(1) {
        if *c != copies[0].1 {
            violations.push(diverged(format!(
                "node {id}'s copy ({} rows) differs from node {}'s ({} rows)",
                c.len(),
                copies[0].0,
                copies[0].1.len()
            )));
        }
    }
}
