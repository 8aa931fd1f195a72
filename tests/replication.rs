//! Replication on real nodes over TCP on 127.0.0.1.

mod common;

use common::Cluster;
use metakv::{Applied, Consistency, Expect, Kv, Role};
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_are_read_linearizably_everywhere() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    tracing::info!(
        leader,
        "--- writes through every node, leader and followers"
    );
    cluster.node(1).create_bucket("users").await.unwrap();
    for id in 1..=3u64 {
        for i in 0..20 {
            let key = format!("user/{id}/{i}");
            let got = cluster
                .node(id)
                .put("users", key.as_bytes(), b"v", Expect::Absent)
                .await
                .unwrap();
            assert!(matches!(got, Applied::Written { .. }), "{got:?}");
        }
    }
    tracing::info!("--- every node reads every write linearizably, right away");
    for reader in 1..=3u64 {
        for writer in 1..=3u64 {
            let key = format!("user/{writer}/19");
            let record = cluster
                .node(reader)
                .get("users", key.as_bytes())
                .await
                .unwrap();
            assert_eq!(
                record.expect("written").value,
                b"v",
                "node {reader} reading {key}"
            );
        }
        assert_eq!(
            cluster.node(reader).bucket("users").await.unwrap().records,
            60
        );
    }
    tracing::info!("--- local reads converge");
    let applied = cluster.node(leader).node_status().applied;
    cluster.applied(applied).await;
    for id in 1..=3u64 {
        let page = cluster
            .node(id)
            .scan("users", b"", None, 1000, false, Consistency::Local)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 60, "node {id}");
    }
    tracing::info!("--- expectations and rejections travel back from the leader");
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    let f = cluster.node(follower);
    assert!(matches!(
        f.put("users", b"user/1/0", b"x", Expect::Absent)
            .await
            .unwrap(),
        Applied::Conflict { current: Some(_) }
    ));
    let err = f.put("nope", b"k", b"v", Expect::Any).await.unwrap_err();
    assert_eq!(
        err.rejection_kind(),
        Some(metakv::RejectionKind::BucketNotFound),
        "{err}"
    );
    let err = f.put("_sys", b"k", b"v", Expect::Any).await.unwrap_err();
    assert_eq!(
        err.rejection_kind(),
        Some(metakv::RejectionKind::Invalid),
        "{err}"
    );
    let status = cluster.node(leader).node_status();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_every_node_from_its_files() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let n = cluster.node(leader);
    n.create_bucket("b").await.unwrap();
    for i in 0..50u32 {
        n.put(
            "b",
            format!("k{i:02}").as_bytes(),
            &i.to_le_bytes(),
            Expect::Any,
        )
        .await
        .unwrap();
    }
    for i in 0..10u32 {
        n.delete("b", format!("k{i:02}").as_bytes(), Expect::Any)
            .await
            .unwrap();
    }
    let applied = n.node_status().applied;
    cluster.applied(applied).await;
    let before = cluster
        .node(1)
        .scan("b", b"", None, 1000, true, Consistency::Local)
        .await
        .unwrap();
    assert_eq!(before.items.iter().filter(|(_, r)| r.deleted).count(), 10);
    tracing::info!("--- stop all three, start them again on their files");
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.leader().await;
    tracing::info!(
        leader,
        "--- same records, revisions and tombstones on every node"
    );
    for id in 1..=3u64 {
        let after = cluster
            .node(id)
            .scan("b", b"", None, 1000, true, Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(after, before, "node {id}");
    }
    cluster
        .node(leader)
        .put("b", b"after", b"restart", Expect::Absent)
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let first = cluster.leader().await;
    cluster.node(first).create_bucket("b").await.unwrap();
    let mut acked = Vec::new();
    for i in 0..30u32 {
        let key = format!("before/{i}");
        cluster
            .node(first)
            .put("b", key.as_bytes(), b"v", Expect::Any)
            .await
            .unwrap();
        acked.push(key);
    }
    tracing::info!(first, "--- stop the leader");
    cluster.stop(first).await;
    let second = cluster.leader().await;
    assert_ne!(second, first);
    let survivor = (1..=3u64).find(|id| *id != first && *id != second).unwrap();
    for i in 0..30u32 {
        let key = format!("during/{i}");
        // Writes through the follower are forwarded to the new leader.
        cluster
            .node(survivor)
            .put("b", key.as_bytes(), b"v", Expect::Any)
            .await
            .unwrap();
        acked.push(key);
    }
    for key in &acked {
        assert!(
            cluster
                .node(survivor)
                .get("b", key.as_bytes())
                .await
                .unwrap()
                .is_some(),
            "{key} lost"
        );
    }
    tracing::info!("--- the old leader comes back and catches up");
    cluster.restart(first).await;
    let applied = cluster.node(second).node_status().applied;
    cluster.applied(applied).await;
    let page = cluster
        .node(first)
        .scan("b", b"", None, 1000, false, Consistency::Local)
        .await
        .unwrap();
    assert_eq!(page.items.len(), acked.len());
    assert_eq!(
        cluster.node(first).node_status().leader,
        Some(cluster.leader().await)
    );
    cluster.shutdown().await;
}

/// openraft alone stands a follower only after the lease (`election_timeout_max`) and then a
/// timeout drawn from `[min, max]`: with these timings never before 6 s of silence. metakv's
/// followers stand once the lease and at most `min / 2` have passed: by 5 s, plus a vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_stands_soon_after_the_leaders_lease_runs_out() {
    let (lease, min) = (Duration::from_millis(4_000), Duration::from_millis(2_000));
    let mut cluster = Cluster::start_with(3, |c| {
        c.election_timeout_min_ms = min.as_millis() as u64;
        c.election_timeout_max_ms = lease.as_millis() as u64;
    })
    .await;
    let first = cluster.leader().await;
    cluster.node(first).create_bucket("b").await.unwrap();
    // The last heartbeat went out at most one interval (50 ms) before this.
    let stopped = std::time::Instant::now();
    let heartbeat = Duration::from_millis(50);
    cluster.stop(first).await;
    let second = loop {
        let leader = cluster
            .running()
            .map(|n| n.node_status())
            .find(|s| s.role == Role::Leader);
        if let Some(s) = leader {
            break s.id;
        }
        assert!(
            stopped.elapsed() < lease + min - heartbeat,
            "no leader {:?} after the leader stopped: openraft's own timer, not the lease, decided",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elected = stopped.elapsed();
    assert_ne!(second, first);
    assert!(
        elected >= lease - heartbeat,
        "elected {elected:?} after the leader stopped, inside its lease"
    );
    cluster
        .node(second)
        .put("b", b"k", b"v", Expect::Any)
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_far_behind_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.snapshot_logs_since_last = 50;
        c.logs_kept_after_snapshot = 0;
    })
    .await;
    let leader = cluster.leader().await;
    let behind = (1..=3u64).find(|id| *id != leader).unwrap();
    cluster.node(leader).create_bucket("b").await.unwrap();
    tracing::info!(behind, "--- stop a follower, write past several snapshots");
    cluster.stop(behind).await;
    let l = cluster.node(leader);
    for i in 0..300u32 {
        l.put(
            "b",
            format!("k{i:03}").as_bytes(),
            &i.to_le_bytes(),
            Expect::Any,
        )
        .await
        .unwrap();
        if i % 3 == 0 {
            l.delete("b", format!("k{i:03}").as_bytes(), Expect::Any)
                .await
                .unwrap();
        }
    }
    let mut purged = 0;
    for _ in 0..100 {
        purged = l
            .raft()
            .metrics()
            .borrow_watched()
            .purged
            .map_or(0, |p| p.index);
        if purged > 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        purged > 100,
        "the leader purged its log up to {purged} only"
    );
    tracing::info!(
        purged,
        "--- restart the follower: the entries it lacks are gone from the log"
    );
    cluster.restart(behind).await;
    let applied = cluster.node(leader).node_status().applied;
    cluster.applied(applied).await;
    let node = cluster.node(behind);
    let snapshot = node.raft().metrics().borrow_watched().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > 100),
        "no snapshot installed: {snapshot:?}"
    );
    let want = cluster
        .node(leader)
        .scan("b", b"", None, 1000, true, Consistency::Local)
        .await
        .unwrap();
    let got = node
        .scan("b", b"", None, 1000, true, Consistency::Local)
        .await
        .unwrap();
    assert_eq!(got, want);
    assert_eq!(got.items.len(), 300);
    tracing::info!("--- and it keeps up afterwards");
    cluster
        .node(leader)
        .put("b", b"after", b"snapshot", Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        node.get("b", b"after").await.unwrap().unwrap().value,
        b"snapshot"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_and_removing_a_node() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    cluster.node(leader).create_bucket("b").await.unwrap();
    cluster
        .node(leader)
        .put("b", b"k", b"v", Expect::Any)
        .await
        .unwrap();
    let applied = cluster.node(leader).node_status().applied;
    cluster.applied(applied).await;
    let follower = (1..=3u64).find(|id| *id != leader).unwrap();
    tracing::info!("--- every member's own status, asked through a follower");
    let status = cluster.node(follower).cluster_status().await.unwrap();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.nodes.len(), 3);
    for report in &status.nodes {
        let s = report.status.as_ref().expect("every member answers");
        assert_eq!(s.id, report.member.id);
        assert!(s.applied >= applied && s.committed >= applied, "{s:?}");
        assert!(s.state_file_bytes > 0 && s.log_file_bytes > 0);
        assert_eq!(s.role == Role::Leader, s.id == leader);
    }
    tracing::info!("--- remove a follower: two voters go on");
    let gone = (1..=3u64)
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    cluster.node(follower).remove_node(gone).await.unwrap();
    let members = cluster.node(leader).node_status().members;
    assert!(
        members.iter().all(|m| m.id != gone || !m.voter),
        "{members:?}"
    );
    cluster.stop(gone).await;
    cluster
        .node(follower)
        .put("b", b"after", b"removal", Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        cluster
            .node(leader)
            .get("b", b"after")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"removal"
    );
    cluster.shutdown().await;
}
