//! Arbitrary Raft commands applied, in arbitrary batches, through the real state machine
//! (`metakv_raft::StateMachine`, as openraft drives it) on two nodes. One of them builds a
//! snapshot midway, and a third, fresh node installs that snapshot and applies the rest, as a
//! node restarted from a snapshot does. The first and the third must end byte-identical: the
//! same export of their whole store, meta included (determinism: the state is a function of
//! the log alone).

#![no_main]

use std::sync::{Arc, OnceLock, RwLock};

use arbitrary::{Result, Unstructured};
use futures_util::stream;
use libfuzzer_sys::fuzz_target;
use metakv_raft::{Command, StateMachine, TypeConfig};
use metakv_store::archive::Scope;
use metakv_store::{Config, Store};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

type Entry = openraft::alias::EntryOf<TypeConfig>;

const ENTRIES_MAX: usize = 120;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

struct Node {
    sm: StateMachine,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = Config {
            durable: false,
            ..Config::new(dir.path().join("state.redb"))
        };
        let store = Arc::new(RwLock::new(Store::open(config).expect("a store")));
        let sm = StateMachine::new(store, dir.path().join("snapshots")).expect("a state machine");
        Node { sm, _dir: dir }
    }

    async fn apply(&mut self, entries: &[Entry]) {
        let batch = entries.iter().cloned().map(|e| Ok((e, None)));
        self.sm
            .apply(stream::iter(batch))
            .await
            .expect("apply never fails on a healthy file");
    }

    fn export(&self) -> Vec<u8> {
        let store = self.sm.store().read().unwrap_or_else(|e| e.into_inner());
        store.export(Scope::Store, Vec::new()).expect("an export").1
    }
}

fn entries(u: &mut Unstructured) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut time_ms = 1_000u64;
    let mut term = 1;
    while out.len() < ENTRIES_MAX && !u.is_empty() {
        let index = out.len() as u64 + 1;
        if u.ratio(1, 20)? {
            term += 1;
        }
        let log_id = openraft::testing::log_id::<TypeConfig>(term, 1, index);
        // The leader's clock may stand still or jump, never run backwards within a term.
        time_ms += u.int_in_range(0..=5_000)?;
        let entry = if u.ratio(1, 25)? {
            Entry::new_blank(log_id)
        } else {
            let op = metakv_fuzz::op(u, index)?;
            Entry::new_normal(log_id, Command { time_ms, op })
        };
        out.push(entry);
    }
    Ok(out)
}

/// Splits `entries` into batches of arbitrary sizes, as openraft hands them over.
fn batches<'e>(u: &mut Unstructured, entries: &'e [Entry]) -> Result<Vec<&'e [Entry]>> {
    let mut out = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let n = u.int_in_range(1..=rest.len().min(16))?;
        let (now, later) = rest.split_at(n);
        out.push(now);
        rest = later;
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(log) = entries(&mut u) else { return };
    if log.is_empty() {
        return;
    }
    let Ok(split) = u.int_in_range(0..=log.len()) else {
        return;
    };
    let (Ok(all), Ok(first), Ok(rest)) = (
        batches(&mut u, &log),
        batches(&mut u, &log[..split]),
        batches(&mut u, &log[split..]),
    ) else {
        return;
    };
    runtime().block_on(async {
        let mut a = Node::new();
        for b in all {
            a.apply(b).await;
        }
        let mut b = Node::new();
        for batch in first {
            b.apply(batch).await;
        }
        let snapshot = b.sm.build_snapshot().await.expect("a snapshot");
        let mut c = Node::new();
        c.sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installing the snapshot");
        assert_eq!(
            c.export(),
            b.export(),
            "the installed snapshot differs from its source"
        );
        for batch in rest {
            c.apply(batch).await;
        }
        assert_eq!(
            a.export(),
            c.export(),
            "the same log gave two different states"
        );
    });
});
