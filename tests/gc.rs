//! Tombstone GC on real nodes: full jobs, failures in the middle, writes during a job, and
//! watchers pinning tombstones.

mod common;

use std::time::Duration;

use common::{Cluster, applied_on};
use metakv::{Consistency, GcOutcome, JobRecord, Kv, Node, store::Expect};

const POLL: Duration = Duration::from_millis(50);

/// Writes `n` records to `bucket` and deletes all but every `keep_every`-th; returns the keys
/// kept.
async fn load(node: &Node, bucket: &str, n: usize, keep_every: usize) -> Vec<Vec<u8>> {
    node.create_bucket(bucket).await.unwrap();
    let value = vec![7u8; 200];
    for i in 0..n {
        node.put(bucket, format!("user/{i:06}").as_bytes(), &value, Expect::Any)
            .await
            .unwrap();
    }
    let mut kept = Vec::new();
    for i in 0..n {
        let key = format!("user/{i:06}").into_bytes();
        if i % keep_every == 0 {
            kept.push(key);
        } else {
            node.delete(bucket, &key, Expect::Any).await.unwrap();
        }
    }
    kept
}

/// Every key of `bucket` on `node`'s own copy, tombstones included, with whether each is one.
async fn local_keys(node: &Node, bucket: &str) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = node
            .scan(bucket, b"", after.clone(), 1000, true, Consistency::Local)
            .await
            .unwrap();
        out.extend(page.items.iter().map(|(k, r)| (k.clone(), r.deleted)));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

async fn run_job(cluster: &Cluster, via: &Node) -> JobRecord {
    let job = via.gc_run(false, Some(0)).await.unwrap();
    let record = tokio::time::timeout(Duration::from_secs(60), via.gc_wait(job, POLL))
        .await
        .expect("the job ends")
        .unwrap();
    tracing::info!(?record, "job ended");
    let _ = cluster;
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

    let record = run_job(&cluster, &leader).await;
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
        assert!(keys.iter().all(|(_, deleted)| !deleted), "node {} kept tombstones", node.id());
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
