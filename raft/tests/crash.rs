//! Crash consistency below Raft: the log store and the state store on a redb
//! `StorageBackend` that keeps what was written but not yet synced, and "crashes" at a chosen
//! point by keeping only a random part of it (whole writes dropped or kept, some torn at a
//! 512-byte sector). Thousands of crashes, each at another point; after each, the files
//! reopen, hold exactly the state of the last operation that returned (or of the one under
//! way, whole: a transaction is atomic), and pass `check`. Injected I/O errors (a failed
//! write, a failed sync) fail the operation and every later one on that file: never retried.
//!
//! The two files together through one power cut: the state store's applied index never
//! passes the durable log, and the log replayed brings the store to the log's state.
//!
//! `CRASHES` (default 1,000 in the test command) sets how many crashes each test runs.

#[path = "../../tests/common/rng.rs"]
mod rng;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use metakv_raft::types::{Entry, LogId, Vote};
use metakv_raft::{Command, LogStore, StateMachine, TypeConfig};
use metakv_store::{Applied, Config, Expect, Op, Stamp, Store};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use rng::Rng;

const SECTOR: usize = 512;

fn crashes() -> u64 {
    std::env::var("CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// A write or a length change not yet synced.
#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    Len(u64),
}

#[derive(Debug)]
struct Disk {
    /// What a crash keeps for certain: the bytes as of the last sync.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    /// Writes, length changes and syncs so far, counted once the disk is armed.
    steps: u64,
    crash_at: Option<u64>,
    /// Fail the next write (`Some(false)`) or sync (`Some(true)`) with an I/O error.
    fail: Option<bool>,
    /// Set by a crash or an injected error: every later call fails.
    dead: Option<&'static str>,
    image: Option<Vec<u8>>,
    rng: Rng,
}

/// The crash backend. Clones share the disk.
#[derive(Debug, Clone)]
struct CrashDisk(Arc<Mutex<Disk>>);

impl CrashDisk {
    fn new(image: Vec<u8>, seed: u64) -> CrashDisk {
        CrashDisk(Arc::new(Mutex::new(Disk {
            durable: image.clone(),
            current: image,
            unsynced: Vec::new(),
            steps: 0,
            crash_at: None,
            fail: None,
            dead: None,
            image: None,
            rng: Rng::new(seed),
        })))
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.0.lock().unwrap()
    }

    /// Crashes at the `n`-th step from now.
    fn arm(&self, n: u64) {
        let mut d = self.disk();
        d.steps = 0;
        d.crash_at = Some(n);
    }

    /// The image a crash left: the durable bytes and a random part of the rest. Crashes now
    /// if the disk has not crashed yet.
    fn crash(&self) -> Vec<u8> {
        let mut d = self.disk();
        if d.image.is_none() {
            d.crash_now();
        }
        d.image.clone().unwrap()
    }
}

impl Disk {
    fn crash_now(&mut self) {
        let mut image = self.durable.clone();
        let unsynced = std::mem::take(&mut self.unsynced);
        for u in &unsynced {
            match u {
                Unsynced::Len(len) => image.resize(*len as usize, 0),
                Unsynced::Write { offset, data } => {
                    let keep = match self.rng.below(4) {
                        0 => 0,
                        1 | 2 => data.len(),
                        _ => (self.rng.below(data.len().div_ceil(SECTOR)) * SECTOR).min(data.len()),
                    };
                    let at = *offset as usize;
                    if image.len() < at + keep {
                        image.resize(at + keep, 0);
                    }
                    image[at..at + keep].copy_from_slice(&data[..keep]);
                }
            }
        }
        self.image = Some(image);
        self.dead = Some("the disk crashed");
    }

    fn step(&mut self) -> io::Result<()> {
        self.alive()?;
        self.steps += 1;
        if self.crash_at == Some(self.steps) {
            self.crash_now();
            return Err(io::Error::other("the disk crashed"));
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        match self.dead {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(()),
        }
    }
}

impl redb::StorageBackend for CrashDisk {
    fn len(&self) -> io::Result<u64> {
        let d = self.disk();
        d.alive()?;
        Ok(d.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.disk();
        d.alive()?;
        let at = offset as usize;
        let src = d
            .current
            .get(at..at + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.disk();
        d.alive()?;
        d.current.resize(len as usize, 0);
        d.unsynced.push(Unsynced::Len(len));
        d.step()
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut d = self.disk();
        d.alive()?;
        if d.fail == Some(true) {
            d.dead = Some("injected: fsync failed");
            return Err(io::Error::other("injected: fsync failed"));
        }
        d.step()?;
        d.durable = d.current.clone();
        d.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk();
        d.alive()?;
        if d.fail == Some(false) {
            d.dead = Some("injected: write failed");
            return Err(io::Error::other("injected: write failed"));
        }
        let at = offset as usize;
        if d.current.len() < at + data.len() {
            d.current.resize(at + data.len(), 0);
        }
        d.current[at..at + data.len()].copy_from_slice(data);
        d.unsynced.push(Unsynced::Write {
            offset,
            data: data.to_vec(),
        });
        d.step()
    }
}

/// Checks what a file reopened with after a crash: what an operation that returned Ok wrote
/// is there, and the one under way is there whole or not at all. True if it is there.
fn reopened_under_way<T: PartialEq + std::fmt::Debug>(
    crash: u64,
    file: &str,
    got: &T,
    acknowledged: &T,
    under_way: Option<&T>,
) -> bool {
    if got == acknowledged {
        return false;
    }
    assert_eq!(
        Some(got),
        under_way,
        "crash {crash}: the reopened {file} is neither the last acknowledged state nor the one \
         under way"
    );
    true
}

/// What the log holds, as openraft reads it.
#[derive(Debug, Clone, Default, PartialEq)]
struct LogModel {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    purged: Option<LogId>,
}

#[derive(Debug, Clone)]
enum LogOp {
    Append(Vec<Entry>),
    Vote(Vote),
    TruncateAfter(Option<LogId>),
    Purge(LogId),
}

impl LogModel {
    fn last(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .copied()
            .or(self.purged.map(|p| p.index))
            .unwrap_or(0)
    }

    fn next_op(&self, rng: &mut Rng, term: &mut u64) -> LogOp {
        let first = self.purged.map_or(1, |p| p.index + 1);
        match rng.below(10) {
            0..5 => {
                let n = rng.range(1, 6);
                let from = self.last() + 1;
                let entries = (from..from + n)
                    .map(|i| {
                        let mut e = Entry::new_blank(log_id::<TypeConfig>(*term, 1, i));
                        if rng.below(2) == 0 {
                            e.payload = EntryPayload::Normal(Command {
                                time_ms: i,
                                op: Op::Put {
                                    bucket: "b".into(),
                                    key: format!("k{i}").into_bytes(),
                                    value: vec![i as u8; rng.below(3000)],
                                    expect: Expect::Any,
                                },
                            });
                        }
                        e
                    })
                    .collect();
                LogOp::Append(entries)
            }
            5..7 => {
                if rng.below(2) == 0 {
                    *term += 1;
                }
                LogOp::Vote(Vote::new(*term, 1 + rng.below(3) as u64))
            }
            7 if self.last() >= first => {
                let keep = rng.range(first - 1, self.last() + 1);
                let id = self
                    .entries
                    .get(&keep)
                    .map(|e| e.log_id)
                    .or(self.purged.filter(|p| p.index == keep));
                LogOp::TruncateAfter(id)
            }
            _ if self.last() >= first => {
                let upto = rng.range(first, self.last() + 1);
                LogOp::Purge(self.entries[&upto].log_id)
            }
            _ => LogOp::Vote(Vote::new(*term, 1)),
        }
    }

    fn after(&self, op: &LogOp) -> LogModel {
        let mut m = self.clone();
        match op {
            LogOp::Append(entries) => {
                for e in entries {
                    m.entries.insert(e.log_id.index, e.clone());
                }
            }
            LogOp::Vote(v) => m.vote = Some(*v),
            LogOp::TruncateAfter(keep) => {
                let from = keep.map_or(0, |l| l.index + 1);
                m.entries.retain(|&i, _| i < from);
            }
            LogOp::Purge(upto) => {
                m.purged = Some(*upto);
                m.entries.retain(|&i, _| i > upto.index);
            }
        }
        m
    }
}

async fn perform(log: &mut LogStore, op: &LogOp) -> io::Result<()> {
    match op {
        LogOp::Append(entries) => log.append(entries.clone(), IOFlushed::noop()).await,
        LogOp::Vote(v) => log.save_vote(v).await,
        LogOp::TruncateAfter(keep) => log.truncate_after(*keep).await,
        // openraft purges only what it has committed, and saves the commit point first.
        LogOp::Purge(upto) => {
            log.save_committed(Some(*upto)).await?;
            log.purge(*upto).await
        }
    }
}

async fn read_log(log: &mut LogStore) -> io::Result<LogModel> {
    let state = log.get_log_state().await?;
    let entries = log.try_get_log_entries(..).await?;
    Ok(LogModel {
        entries: entries.into_iter().map(|e| (e.log_id.index, e)).collect(),
        vote: log.read_vote().await?,
        purged: state.last_purged_log_id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_crashes_at_any_point() {
    let mut rng = Rng::new(0x006c_6f67);
    let mut reopened_with_more = 0;
    for crash in 0..crashes() {
        let disk = CrashDisk::new(Vec::new(), rng.next_u64());
        let mut log = LogStore::open_with_backend(disk.clone()).unwrap();
        // Some history first, synced, so crashes land on a log with a past.
        let (mut model, mut term) = (LogModel::default(), 1);
        disk.arm(rng.range(1, 160));
        let mut under_way = None;
        for _ in 0..rng.range(1, 14) {
            let op = model.next_op(&mut rng, &mut term);
            let next = model.after(&op);
            match perform(&mut log, &op).await {
                Ok(()) => model = next,
                Err(_) => {
                    under_way = Some(next);
                    break;
                }
            }
        }
        let image = disk.crash();
        drop(log);
        let mut log = LogStore::open_with_backend(CrashDisk::new(image, rng.next_u64()))
            .unwrap_or_else(|e| panic!("crash {crash}: the log does not reopen: {e}"));
        let got = read_log(&mut log).await.unwrap();
        // IMPORTANT: the vote never goes back, no entry is lost or changed.
        if reopened_under_way(crash, "log", &got, &model, under_way.as_ref()) {
            reopened_with_more += 1;
        }
        let check = log.check().unwrap().unwrap();
        assert!(
            check.problems.is_empty(),
            "crash {crash}: {:?}",
            check.problems
        );
    }
    eprintln!(
        "{} crashes; {reopened_with_more} reopened with the operation under way",
        crashes()
    );
}

/// What the state store holds of bucket `b`'s keys (none without the bucket).
fn read_store(store: &Store) -> BTreeMap<Vec<u8>, (Vec<u8>, u64, bool)> {
    let view = store.read().unwrap();
    let page = view.scan(
        "b",
        &metakv_store::Scan {
            prefix: Vec::new(),
            after: None,
            limit: 1000,
            include_tombstones: true,
        },
    );
    // No bucket yet: a crash took its creation too.
    let page = match page {
        Err(metakv_store::Error::BucketNotFound { .. }) => return BTreeMap::new(),
        page => page.unwrap(),
    };
    page.items
        .into_iter()
        .map(|(k, r)| (k, (r.value, r.rev, r.deleted)))
        .collect()
}

/// The state store's settings on a crash disk (the path is not used).
fn store_config(durable: bool) -> Config {
    Config {
        durable,
        ..Config::new("crash-test.redb")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_store_survives_crashes_at_any_point() {
    let mut rng = Rng::new(0x0073_7461_7465);
    let config = || store_config(true);
    for crash in 0..crashes() {
        let disk = CrashDisk::new(Vec::new(), rng.next_u64());
        let store = Store::open_with_backend(config(), disk.clone()).unwrap();
        let mut rev = 1;
        store
            .apply(
                &Op::CreateBucket { bucket: "b".into() },
                Stamp { rev, time_ms: 0 },
            )
            .unwrap();
        let mut model = read_store(&store);
        disk.arm(rng.range(1, 120));
        let mut under_way = None;
        for _ in 0..rng.range(1, 12) {
            rev += 1;
            let key = format!("k{}", rng.below(8)).into_bytes();
            let op = if rng.below(3) == 0 {
                Op::Delete {
                    bucket: "b".into(),
                    key,
                    expect: Expect::Any,
                }
            } else {
                Op::Put {
                    bucket: "b".into(),
                    key,
                    value: vec![rev as u8; rng.below(5000)],
                    expect: Expect::Any,
                }
            };
            match store.apply(&op, Stamp { rev, time_ms: rev }) {
                Ok(Applied::Written { .. } | Applied::NotFound) => model = read_store(&store),
                Ok(other) => panic!("{op:?} answered {other:?}"),
                Err(_) => {
                    // What it would have been: the same op on the model's own copy.
                    let mut next = model.clone();
                    if let Op::Put { key, value, .. } = &op {
                        next.insert(key.clone(), (value.clone(), rev, false));
                    } else if let Op::Delete { key, .. } = &op
                        && next.get(key).is_some_and(|r| !r.2)
                    {
                        next.insert(key.clone(), (Vec::new(), rev, true));
                    }
                    under_way = Some(next);
                    break;
                }
            }
        }
        let image = disk.crash();
        drop(store);
        let mut store = Store::open_with_backend(config(), CrashDisk::new(image, rng.next_u64()))
            .unwrap_or_else(|e| panic!("crash {crash}: the store does not reopen: {e}"));
        let got = read_store(&store);
        reopened_under_way(crash, "store", &got, &model, under_way.as_ref());
        let report = store.check().unwrap();
        assert!(report.is_ok(), "crash {crash}: {:?}", report.problems);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_is_fatal_for_the_file_and_never_retried() {
    for fail_sync in [false, true] {
        let disk = CrashDisk::new(Vec::new(), 7);
        let mut log = LogStore::open_with_backend(disk.clone()).unwrap();
        let entries = |from: u64| {
            (from..from + 3)
                .map(|i| Entry::new_blank(log_id::<TypeConfig>(1, 1, i)))
                .collect::<Vec<_>>()
        };
        log.append(entries(1), IOFlushed::noop()).await.unwrap();
        disk.disk().fail = Some(fail_sync);
        let failed = log.append(entries(4), IOFlushed::noop()).await;
        assert!(failed.is_err(), "an append over a failing disk returned Ok");
        // The fault is gone, but the file is not used again: redb refuses every later write.
        disk.disk().fail = None;
        disk.disk().dead = None;
        let again = log.append(entries(4), IOFlushed::noop()).await;
        assert!(
            again.is_err(),
            "an append after a failed {} was accepted",
            if fail_sync { "fsync" } else { "write" }
        );
    }
}

/// One node's two files through one power cut: entries appended to the log (each append
/// durable before it returns) and applied to the state store (written without fsync, as a
/// node does) up to a commit point, until the cut. After it, reopened: the store's applied
/// index never exceeds the log's last entry, the store holds exactly the effect of the log's
/// entries up to its applied index, and applying the rest of the log (what a restarted node
/// does) brings it to the state of the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_the_state_store_survive_one_crash_together() {
    let mut rng = Rng::new(0x626f_7468);
    let config = || store_config(false);
    let (mut applied_lost, mut applied_kept) = (0, 0);
    // The disks are in memory; the state machine's snapshot dir is removed with the test.
    let snapshots = tempfile::tempdir().unwrap();
    let temp_dir = || snapshots.path().to_owned();
    for crash in 0..crashes() {
        let (log_disk, state_disk) = (
            CrashDisk::new(Vec::new(), rng.next_u64()),
            CrashDisk::new(Vec::new(), rng.next_u64()),
        );
        let mut log = LogStore::open_with_backend(log_disk.clone()).unwrap();
        let store = Store::open_with_backend(config(), state_disk.clone()).unwrap();
        let mut sm =
            StateMachine::new(Arc::new(std::sync::RwLock::new(store)), temp_dir()).unwrap();
        let mut next = 1;
        append_and_apply(&mut log, &mut sm, &mut next, 1, &mut rng)
            .await
            .unwrap();
        // The cut: at a step of either file; both lose what they had not synced.
        if rng.below(2) == 0 {
            log_disk.arm(rng.range(1, 60));
        } else {
            state_disk.arm(rng.range(1, 60));
        }
        for _ in 0..rng.range(1, 12) {
            let n = rng.range(1, 6);
            if append_and_apply(&mut log, &mut sm, &mut next, n, &mut rng)
                .await
                .is_err()
            {
                break;
            }
        }
        let (log_image, state_image) = (log_disk.crash(), state_disk.crash());
        drop((log, sm));
        let mut log = LogStore::open_with_backend(CrashDisk::new(log_image, rng.next_u64()))
            .unwrap_or_else(|e| panic!("crash {crash}: the log does not reopen: {e}"));
        let store = Store::open_with_backend(config(), CrashDisk::new(state_image, rng.next_u64()))
            .unwrap_or_else(|e| panic!("crash {crash}: the store does not reopen: {e}"));
        let mut sm =
            StateMachine::new(Arc::new(std::sync::RwLock::new(store)), temp_dir()).unwrap();
        let entries = log.try_get_log_entries(..).await.unwrap();
        let last = entries.last().map_or(0, |e| e.log_id.index);
        let (applied, _) = sm.applied_state().await.unwrap();
        let applied = applied.map_or(0, |l| l.index);
        // IMPORTANT: a state ahead of the log would hold writes the log no longer has.
        assert!(
            applied <= last,
            "crash {crash}: the store applied {applied}, the log ends at {last}"
        );
        if applied + 1 < next {
            applied_lost += 1;
        }
        applied_kept += u64::from(applied > 0);
        let upto: Vec<Entry> = entries
            .iter()
            .filter(|e| e.log_id.index <= applied)
            .cloned()
            .collect();
        assert_eq!(
            read_store(&sm.store().read().unwrap()),
            effect_of(&upto),
            "crash {crash}: the store is not the effect of the log up to its applied index"
        );
        // The restart: the rest of the log is applied again.
        let rest: Vec<Entry> = entries
            .iter()
            .filter(|e| e.log_id.index > applied)
            .cloned()
            .collect();
        apply(&mut sm, rest).await.unwrap();
        assert_eq!(
            read_store(&sm.store().read().unwrap()),
            effect_of(&entries),
            "crash {crash}: replaying the log did not bring the store to the log's state"
        );
        let report = sm.store().write().unwrap().check().unwrap();
        assert!(report.is_ok(), "crash {crash}: {:?}", report.problems);
    }
    eprintln!(
        "{} crashes; {applied_lost} lost applied entries the log still had; \
         {applied_kept} reopened with some applied",
        crashes()
    );
}

/// Appends `n` entries (the first creates the bucket) durably, then applies them; syncs the
/// store one time in four.
async fn append_and_apply(
    log: &mut LogStore,
    sm: &mut StateMachine,
    next: &mut u64,
    n: u64,
    rng: &mut Rng,
) -> io::Result<()> {
    let entries: Vec<Entry> = (*next..*next + n)
        .map(|i| {
            let mut e = Entry::new_blank(log_id::<TypeConfig>(1, 1, i));
            let op = if i == 1 {
                Op::CreateBucket { bucket: "b".into() }
            } else if rng.below(4) == 0 {
                Op::Delete {
                    bucket: "b".into(),
                    key: format!("k{}", rng.below(8)).into_bytes(),
                    expect: Expect::Any,
                }
            } else {
                Op::Put {
                    bucket: "b".into(),
                    key: format!("k{}", rng.below(8)).into_bytes(),
                    value: vec![i as u8; rng.below(3000)],
                    expect: Expect::Any,
                }
            };
            e.payload = EntryPayload::Normal(Command { time_ms: i, op });
            e
        })
        .collect();
    log.append(entries.clone(), IOFlushed::noop()).await?;
    *next += n;
    // Committed once durable here (a single node's quorum), then applied.
    log.save_committed(entries.last().map(|e| e.log_id)).await?;
    apply(sm, entries).await?;
    // Now and then the store is made durable, as before a snapshot.
    if rng.below(4) == 0 {
        let store = Arc::clone(sm.store());
        let synced = store.read().unwrap().sync();
        synced.map_err(io::Error::other)?;
    }
    Ok(())
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> io::Result<()> {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures_util::stream::iter(items)).await
}

/// What applying `entries` in order to an empty store leaves in bucket `b`.
fn effect_of(entries: &[Entry]) -> BTreeMap<Vec<u8>, (Vec<u8>, u64, bool)> {
    let mut m = BTreeMap::new();
    for e in entries {
        let EntryPayload::Normal(cmd) = &e.payload else {
            continue;
        };
        let rev = e.log_id.index;
        match &cmd.op {
            Op::Put { key, value, .. } => {
                m.insert(key.clone(), (value.clone(), rev, false));
            }
            Op::Delete { key, .. } if m.get(key).is_some_and(|r| !r.2) => {
                m.insert(key.clone(), (Vec::new(), rev, true));
            }
            _ => {}
        }
    }
    m
}
