//! Tombstone GC on real nodes: full jobs, failures in the middle, writes during a job, and
//! watchers pinning tombstones.

mod common;

use std::time::Duration;

use common::{Cluster, applied_on, load};
use metakv::{GcOutcome, JobRecord, Kv, Node, store::Expect};

const POLL: Duration = Duration::from_millis(50);

/// Every key of `bucket` on `node`'s own copy, tombstones included, with whether each is one.
async fn local_keys(node: &Node, bucket: &str) -> Vec<(Vec<u8>, bool)> {
    common::local_records(node, bucket)
        .await
        .into_iter()
        .map(|(k, r)| (k, r.deleted))
        .collect()
}

async fn run_job(via: &Node) -> JobRecord {
    let job = via.gc_run(false, Some(0)).await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(60), via.gc_wait(job, POLL))
        .await
        .expect("the job ends")
        .unwrap();
    tracing::info!(?record, "job ended");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_purges_on_every_node_and_the_files_shrink() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.node(cluster.leader().await).clone();
    let kept = load(&leader, "users", 3000, 10).await;
    cluster.applied(applied_on(&leader).await).await;
    let before: Vec<u64> = cluster
        .running()
        .map(|n| n.node_status().state_file_bytes)
        .collect();

    let record = run_job(&leader).await;
    assert_eq!(record.outcome, GcOutcome::Succeeded, "{record:?}");
    assert_eq!(record.agreed, 2700);
    assert_eq!(record.purged, 2700);
    assert_eq!(record.skipped, 0);
    assert_eq!(record.collected.len(), 3);
    // Followers first, then the old leader, compacted after it handed leadership over.
    assert_eq!(record.compactions.len(), 3);
    assert_eq!(record.compactions[2].node, leader.id());
    assert_ne!(cluster.leader().await, leader.id());
    for c in &record.compactions {
        assert!(c.bytes_after < c.bytes_before, "{c:?}");
    }

    for node in cluster.running() {
        let keys = local_keys(node, "users").await;
        assert!(
            keys.iter().all(|(_, deleted)| !deleted),
            "node {} kept tombstones",
            node.id()
        );
        let live: Vec<Vec<u8>> = keys.into_iter().map(|(k, _)| k).collect();
        assert_eq!(live, kept, "node {}", node.id());
        let info = node.store().read().unwrap().bucket("users").unwrap();
        assert_eq!((info.records, info.tombstones), (300, 0));
    }
    let after: Vec<u64> = cluster
        .running()
        .map(|n| n.node_status().state_file_bytes)
        .collect();
    for (b, a) in before.iter().zip(&after) {
        assert!(a < b, "state files before {before:?}, after {after:?}");
    }
    // The record reads the same from any node.
    for node in cluster.running() {
        let status = node.gc_status(5).await.unwrap();
        assert_eq!(status.jobs[0], record);
    }
    cluster.shutdown().await;
}

/// Polls the leader's view of the running job until `reached` holds for its progress.
async fn wait_progress(leader: &Node, reached: impl Fn(&metakv::gc_engine::Progress) -> bool) {
    for _ in 0..2000 {
        let status = leader.gc_status(1).await.unwrap();
        if status.running.as_ref().is_some_and(&reached) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the job never got there");
}

/// Every node holds exactly the same keys and tombstones in `bucket`.
async fn same_everywhere(cluster: &Cluster, bucket: &str) -> Vec<(Vec<u8>, bool)> {
    let mut views = Vec::new();
    for node in cluster.running() {
        views.push((node.id(), local_keys(node, bucket).await));
    }
    for (id, v) in &views[1..] {
        assert!(
            *v == views[0].1,
            "node {id} differs from node {}",
            views[0].0
        );
    }
    views.remove(0).1
}

fn slow_gc(c: &mut metakv::NodeConfig) {
    c.gc.page_size = 10;
    c.gc.purge_batch = 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_lost_during_collect_fails_the_job_and_the_next_one_succeeds() {
    let mut cluster = Cluster::start_with(3, slow_gc).await;
    let leader_id = cluster.leader().await;
    let leader = cluster.node(leader_id).clone();
    let kept = load(&leader, "users", 2000, 4).await;
    cluster.applied(applied_on(&leader).await).await;
    let follower = (1..=3).find(|&id| id != leader_id).unwrap();

    let job = leader.gc_run(false, Some(0)).await.unwrap();
    wait_progress(&leader, |p| p.phase == "collect+purge" && p.agreed > 0).await;
    cluster.stop(follower).await;
    let record = leader.gc_wait(job, POLL).await.unwrap();
    let GcOutcome::Failed { reason } = &record.outcome else {
        panic!("{record:?}");
    };
    assert!(reason.contains(&format!("node {follower}")), "{reason}");
    assert!(record.compactions.is_empty());
    // Whatever was purged before the failure went through the log: both live nodes agree.
    let seen = same_everywhere(&cluster, "users").await;
    assert!(
        seen.iter().any(|(_, deleted)| *deleted),
        "the job stopped early"
    );

    // A job cannot start while a member does not answer...
    let refused = leader.gc_run(false, Some(0)).await.unwrap_err();
    assert!(
        refused.to_string().contains(&format!("node {follower}")),
        "{refused}"
    );
    // ...and succeeds once it is back.
    cluster.restart(follower).await;
    cluster.applied(applied_on(&leader).await).await;
    let leader = cluster.node(cluster.leader().await).clone();
    let job = leader.gc_run(false, Some(0)).await.unwrap();
    let record = leader.gc_wait(job, POLL).await.unwrap();
    assert_eq!(record.outcome, GcOutcome::Succeeded, "{record:?}");
    cluster.applied(applied_on(&leader).await).await;
    let all = same_everywhere(&cluster, "users").await;
    let live: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
    assert!(all.iter().all(|(_, deleted)| !deleted));
    assert_eq!(live, kept);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_lost_during_purge_leaves_every_node_consistent() {
    let mut cluster = Cluster::start_with(3, slow_gc).await;
    let old = cluster.leader().await;
    let leader = cluster.node(old).clone();
    let kept = load(&leader, "users", 2000, 4).await;
    cluster.applied(applied_on(&leader).await).await;

    let job = leader.gc_run(false, Some(0)).await.unwrap();
    wait_progress(&leader, |p| p.purged > 0).await;
    drop(leader);
    cluster.stop(old).await;

    // The new leader records the interrupted job as failed...
    let new = cluster.node(cluster.leader().await).clone();
    let record = tokio::time::timeout(Duration::from_secs(30), new.gc_wait(job, POLL))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(record.outcome, GcOutcome::Failed { .. }),
        "{record:?}"
    );
    cluster.applied(applied_on(&new).await).await;
    same_everywhere(&cluster, "users").await;

    // ...and its own job, with the old leader back, finishes the work on every node.
    cluster.restart(old).await;
    cluster.applied(applied_on(&new).await).await;
    let record = run_job(&new).await;
    assert_eq!(record.outcome, GcOutcome::Succeeded, "{record:?}");
    cluster.applied(applied_on(&new).await).await;
    let all = same_everywhere(&cluster, "users").await;
    assert!(all.iter().all(|(_, deleted)| !deleted));
    assert_eq!(all.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), kept);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_keep_succeeding_during_a_job_and_a_second_run_is_refused() {
    let cluster = Cluster::start_with(3, slow_gc).await;
    let leader_id = cluster.leader().await;
    let leader = cluster.node(leader_id).clone();
    load(&leader, "users", 1000, 2).await;
    leader.create_bucket("config").await.unwrap();
    cluster.applied(applied_on(&leader).await).await;
    let follower = cluster
        .node((1..=3).find(|&id| id != leader_id).unwrap())
        .clone();

    let job = leader.gc_run(false, Some(0)).await.unwrap();
    let again = leader.gc_run(false, Some(0)).await.unwrap_err();
    assert!(matches!(again, metakv::Error::Busy(_)), "{again:?}");
    assert!(again.to_string().contains(&job.to_string()), "{again}");

    // A writer through a follower runs for the whole job, compactions and handoff included.
    let writer = {
        let follower = follower.clone();
        tokio::spawn(async move {
            let mut written = 0u32;
            loop {
                let key = format!("k{written:05}");
                follower
                    .put("config", key.as_bytes(), b"v", Expect::Absent)
                    .await
                    .unwrap_or_else(|e| panic!("write {written} failed: {e}"));
                written += 1;
                if follower
                    .gc_status(5)
                    .await
                    .unwrap()
                    .jobs
                    .iter()
                    .any(|r| r.id == job && r.outcome.is_finished())
                {
                    return written;
                }
            }
        })
    };
    let written = writer.await.unwrap();
    let record = leader.gc_wait(job, POLL).await.unwrap();
    assert_eq!(record.outcome, GcOutcome::Succeeded, "{record:?}");
    assert_eq!(record.purged, 500);
    assert!(written > 0);
    let info = follower.bucket("config").await.unwrap();
    assert_eq!(info.records, u64::from(written));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_watcher_keeps_tombstones_until_it_moves_on() {
    let cluster = Cluster::start_with(3, |c| c.gc.pin_grace_ms = 300).await;
    let leader_id = cluster.leader().await;
    let leader = cluster.node(leader_id).clone();
    let follower = cluster
        .node((1..=3).find(|&id| id != leader_id).unwrap())
        .clone();
    load(&leader, "users", 100, 2).await;
    cluster.applied(applied_on(&leader).await).await;

    // A slow watcher on the follower: it keeps polling from the first change on, so every
    // delete is above its cursor.
    let watcher = {
        let follower = follower.clone();
        tokio::spawn(async move {
            loop {
                let poll = metakv::ClientRequest::Changes {
                    bucket: "users".into(),
                    prefix: Vec::new(),
                    after_rev: 1,
                    limit: 1,
                    wait_ms: 100,
                };
                follower.request(poll).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dry = leader.gc_run(true, Some(0)).await.unwrap();
    let dry = leader.gc_wait(dry, POLL).await.unwrap();
    assert_eq!((dry.agreed, dry.purged), (0, 0), "{dry:?}");
    let record = run_job(&leader).await;
    assert_eq!((record.agreed, record.purged), (0, 0), "{record:?}");
    let tombstones = |n: &Node| {
        n.store()
            .read()
            .unwrap()
            .bucket("users")
            .unwrap()
            .tombstones
    };
    assert!(cluster.running().all(|n| tombstones(n) == 50));

    // Once the watcher is gone and its pin lapsed, the next run purges them.
    watcher.abort();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = cluster.node(cluster.leader().await).clone();
    let dry = leader.gc_run(true, Some(0)).await.unwrap();
    let dry = leader.gc_wait(dry, POLL).await.unwrap();
    assert_eq!(
        (dry.agreed, dry.purged, dry.sample.len()),
        (50, 0, 20),
        "{dry:?}"
    );
    assert!(
        cluster.running().all(|n| tombstones(n) == 50),
        "a dry run purged"
    );
    let record = run_job(&leader).await;
    assert_eq!((record.agreed, record.purged), (50, 50), "{record:?}");
    cluster.applied(applied_on(&leader).await).await;
    assert!(cluster.running().all(|n| tombstones(n) == 0));
    cluster.shutdown().await;
}

/// A job id handed to a caller names a job that is recorded: `gc run` answers only once the
/// job's first record has committed, so `gc wait` on any id it returned can finish. (A leader
/// that answered at the start and then lost leadership before the record committed left its
/// caller waiting on a job that existed nowhere.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_id_is_answered_only_once_its_record_has_committed() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.node(cluster.leader().await).clone();
    for round in 0..5 {
        let job = leader.gc_run(true, Some(0)).await.unwrap();
        let recorded = common::local_records(&leader, metakv::store::SYS_BUCKET)
            .await
            .into_iter()
            .any(|(key, _)| key == job.key());
        assert!(
            recorded,
            "round {round}: gc run answered job {job} before its record was applied on the leader"
        );
        let record = tokio::time::timeout(Duration::from_secs(60), leader.gc_wait(job, POLL))
            .await
            .expect("the job ends")
            .unwrap();
        assert_eq!(record.outcome, GcOutcome::Succeeded, "{record:?}");
    }
    let never = metakv::JobId { term: 999, seq: 1 };
    let refused = tokio::time::timeout(Duration::from_secs(10), leader.gc_wait(never, POLL))
        .await
        .expect("waiting on a job that never ran is refused at once");
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("has no record")),
        "{refused:?}"
    );
    cluster.shutdown().await;
}
