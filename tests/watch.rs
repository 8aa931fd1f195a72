//! Watch: events in revision order on every node, across a leader change; `Compacted` below
//! a bucket's purge floor.

mod common;

use std::collections::BTreeMap;

use common::Cluster;
use metakv::{Applied, Consistency, Expect, Kv, Op, WatchEvent};
use metakv_store::TombstoneRef;

/// Reads events until one at `last_rev`; checks they come in strictly increasing revision
/// order and returns the latest (rev, deleted) of every key seen.
async fn follow<K: Kv>(kv: &K, last_rev: u64) -> BTreeMap<Vec<u8>, (u64, bool)> {
    let mut watch = kv.watch("b", b"", 1);
    let mut seen = BTreeMap::new();
    let mut prev = 0;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), watch.next())
            .await
            .expect("events keep coming")
            .unwrap()
        {
            WatchEvent::Change { key, record } => {
                assert!(record.rev > prev, "revision {} after {prev}", record.rev);
                prev = record.rev;
                seen.insert(key, (record.rev, record.deleted));
                if record.rev == last_rev {
                    return seen;
                }
            }
            WatchEvent::Compacted { floor } => panic!("unexpected compaction at {floor}"),
        }
    }
}

fn rev(a: Applied) -> u64 {
    match a {
        Applied::Written { rev } => rev,
        other => panic!("not written: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_see_changes_in_order_across_a_leader_change() {
    let mut cluster = Cluster::start(3).await;
    let first = cluster.leader().await;
    cluster.node(first).create_bucket("b").await.unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    let mut last = 0;
    for i in 0..20u32 {
        let key = format!("k{:02}", i % 7);
        last = if i % 4 == 3 {
            match cluster
                .node(first)
                .delete("b", key.as_bytes(), Expect::Any)
                .await
                .unwrap()
            {
                Applied::Written { rev } => rev,
                _ => last,
            }
        } else {
            rev(cluster
                .node(first)
                .put("b", key.as_bytes(), &i.to_le_bytes(), Expect::Any)
                .await
                .unwrap())
        };
    }
    tracing::info!(
        first,
        "--- stop the leader; the watchers on the others keep going"
    );
    cluster.stop(first).await;
    let second = cluster.leader().await;
    for i in 20..40u32 {
        let key = format!("k{:02}", i % 9);
        last = rev(cluster
            .node(second)
            .put("b", key.as_bytes(), &i.to_le_bytes(), Expect::Any)
            .await
            .unwrap());
    }
    let want: BTreeMap<Vec<u8>, (u64, bool)> = cluster
        .node(second)
        .scan("b", b"", None, 1000, true, Consistency::Linearizable)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|(k, r)| (k, (r.rev, r.deleted)))
        .collect();
    for id in &others {
        assert_eq!(follow(cluster.node(*id), last).await, want, "node {id}");
    }
    let client = cluster.client(vec![cluster.node(others[0]).addr().to_owned()]);
    assert_eq!(follow(&client, last).await, want, "remote client");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_below_the_purge_floor_is_told_compacted() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    node.create_bucket("b").await.unwrap();
    node.put("b", b"k", b"v", Expect::Any).await.unwrap();
    let deleted = rev(node.delete("b", b"k", Expect::Any).await.unwrap());
    let purge = Op::Purge {
        items: vec![TombstoneRef {
            bucket: "b".into(),
            key: b"k".to_vec(),
            rev: deleted,
        }],
    };
    assert_eq!(
        node.write(purge).await.unwrap(),
        Applied::Purged {
            purged: 1,
            skipped: 0
        }
    );
    let mut watch = node.watch("b", b"", 1);
    assert_eq!(
        watch.next().await.unwrap(),
        WatchEvent::Compacted { floor: deleted }
    );
    // From the floor on, the watch works.
    let mut watch = node.watch("b", b"", deleted + 1);
    let later = rev(node.put("b", b"j", b"v", Expect::Any).await.unwrap());
    match watch.next().await.unwrap() {
        WatchEvent::Change { key, record } => {
            assert_eq!((key.as_slice(), record.rev), (&b"j"[..], later))
        }
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await;
}
