//! A node restarted from a snapshot ends byte-identical to one that applied the whole log.
//!
//! Found by the `command_apply` fuzz target: installing a snapshot of a state machine that had
//! applied nothing wrote an applied-log-id row and a membership row that the source did not
//! have, so the two stores exported differently from then on. Installing now takes the store
//! exactly as the archive holds it (meta included), after checking the archive's meta against
//! the snapshot's. The same change reads a snapshot's meta from the view it exports, so entries
//! applied while a snapshot is built cannot make it claim more than it holds.

use std::sync::{Arc, RwLock};

use futures_util::stream;
use metakv_raft::{Command, StateMachine, TypeConfig};
use metakv_store::archive::Scope;
use metakv_store::{Config, Expect, Op, Store};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

type Entry = openraft::alias::EntryOf<TypeConfig>;

struct Node {
    sm: StateMachine,
    _dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            durable: false,
            ..Config::new(dir.path().join("state.redb"))
        };
        let store = Arc::new(RwLock::new(Store::open(config).unwrap()));
        let sm = StateMachine::new(store, dir.path().join("snapshots")).unwrap();
        Node { sm, _dir: dir }
    }

    async fn apply(&mut self, entries: &[Entry]) {
        let batch = entries.iter().cloned().map(|e| Ok((e, None)));
        self.sm.apply(stream::iter(batch)).await.unwrap();
    }

    fn export(&self) -> Vec<u8> {
        let store = self.sm.store().read().unwrap();
        store.export(Scope::Store, Vec::new()).unwrap().1
    }
}

fn log() -> Vec<Entry> {
    let ops = [
        Op::CreateBucket {
            bucket: "users".into(),
        },
        Op::Put {
            bucket: "users".into(),
            key: b"alice".to_vec(),
            value: b"admin".to_vec(),
            expect: Expect::Absent,
        },
        Op::Delete {
            bucket: "users".into(),
            key: b"alice".to_vec(),
            expect: Expect::Any,
        },
        Op::Put {
            bucket: "nope".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expect: Expect::Any,
        },
    ];
    let mut out = vec![Entry::new_blank(openraft::testing::log_id::<TypeConfig>(
        1, 1, 1,
    ))];
    for (i, op) in ops.into_iter().enumerate() {
        let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, i as u64 + 2);
        out.push(Entry::new_normal(
            log_id,
            Command {
                time_ms: 1_000 * i as u64,
                op,
            },
        ));
    }
    out
}

async fn restarted_at(split: usize) {
    let log = log();
    let mut whole = Node::new();
    whole.apply(&log).await;
    let mut source = Node::new();
    source.apply(&log[..split]).await;
    let snapshot = source.sm.build_snapshot().await.unwrap();
    let mut restarted = Node::new();
    restarted
        .sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(restarted.export(), source.export(), "split at {split}");
    restarted.apply(&log[split..]).await;
    assert_eq!(restarted.export(), whole.export(), "split at {split}");
}

#[tokio::test]
async fn a_snapshot_of_nothing_applied() {
    restarted_at(0).await;
}

#[tokio::test]
async fn a_snapshot_at_every_point_of_the_log() {
    for split in 1..=log().len() {
        restarted_at(split).await;
    }
}
