//! A leader killed with `kill -9` and restarted on its files before any follower's election
//! timer ran out took its leadership back without an election (openraft's leader restore). Its
//! state file and its committed index are written without fsync, so it came back with both
//! behind what it had acknowledged, and answered read-index reads from that state: a
//! linearizable `get` returned a revision older than an acknowledged `put`. A restarted node
//! now always stands for election, and the new leader's read index covers its own term's
//! first entry, so every acknowledged write is visible to the next linearizable read.

use std::time::Duration;

use crate::common::{ProcCluster, serve};
use metakv::{Consistency, Expect, Kv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quickly_restarted_leader_serves_no_stale_linearizable_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(dir.path(), 3);
    let all = cluster.client();
    all.create_bucket("b").await.unwrap();
    for round in 0..8 {
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let through = crate::common::client(dir.path(), vec![cluster.procs[follower].addr.clone()]);
        let mut acked = 0;
        for _ in 0..30 {
            match through.put("b", b"hot", b"v", Expect::Any).await.unwrap() {
                metakv::store::Applied::Written { rev } => acked = rev,
                other => panic!("put answered {other:?}"),
            }
        }
        let addr = cluster.procs[leader].addr.clone();
        cluster.procs[leader].child.kill().unwrap(); // SIGKILL: no shutdown, no fsync
        cluster.procs[leader].child.wait().unwrap();
        cluster.procs[leader] = serve(dir.path(), leader as u64 + 1, &addr, None);
        // At once, through the restarted node: it answers itself if it leads, or forwards.
        let restarted = crate::common::client(dir.path(), vec![addr.clone()]);
        let record = restarted
            .get_with("b", b"hot", Consistency::Linearizable, false)
            .await
            .unwrap()
            .expect("the key was acknowledged");
        assert!(
            record.rev >= acked,
            "round {round}: a linearizable read through restarted node {} answered rev {} \
             after a put was acknowledged at rev {acked}",
            leader + 1,
            record.rev
        );
        // The cluster settles before the next round: a write through every node goes through.
        for p in &cluster.procs {
            crate::common::client(dir.path(), vec![p.addr.clone()])
                .put("b", b"settle", b"v", Expect::Any)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
