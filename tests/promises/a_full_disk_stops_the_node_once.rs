//! With its data dir on a full disk a node's Raft stopped on the first failed write while the
//! process stayed up: local reads answered "Previous I/O error", every linearizable read
//! busy-looped for its whole timeout, the process logged a gigabyte a minute, and freeing
//! space did not bring it back. A node whose files fail now stops: it says why in one line
//! and `metakv serve` exits 1, requests to a library node that stopped answer at once. Once
//! space is back, the node restarts on its files and catches up: every write acknowledged by
//! the cluster is there.

use std::time::Duration;

use crate::common::disk::{Tmpfs, fill};
use crate::common::{ProcCluster, serve_args};
use metakv::{Consistency, Expect, Kv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_full_disk_stops_once_and_recovers_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    let tmpfs = Tmpfs::mount(&mount, 24 << 20);
    let mut cluster = ProcCluster::start(dir.path(), 2);
    // Node 3 keeps its files on the small disk.
    let data3 = mount.join("node3");
    let args3 = [
        "--id",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data3.display().to_string(),
        "--join",
        &cluster.procs[0].addr,
        "--token",
        &crate::common::cli_token(dir.path(), &cluster.procs[0].addr),
    ]
    .map(str::to_owned);
    cluster.procs.push(serve_args(dir.path(), 3, &args3));
    let addr3 = cluster.procs[2].addr.clone();
    let client = crate::common::client(
        dir.path(),
        vec![cluster.procs[0].addr.clone(), cluster.procs[1].addr.clone()],
    );
    client.create_bucket("b").await.unwrap();
    let filler = fill(&mount, 256 << 10);
    let value = vec![7u8; 2048];
    let mut acked = Vec::new();
    let mut exited = None;
    for i in 0..4000u32 {
        let key = format!("k{i:05}");
        if client
            .put("b", key.as_bytes(), &value, Expect::Any)
            .await
            .is_ok()
        {
            acked.push(key);
        }
        if let Some(status) = cluster.procs[2].child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
    }
    // It may take a moment to notice.
    for _ in 0..100 {
        if exited.is_some() {
            break;
        }
        exited = cluster.procs[2].child.try_wait().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("node3.log")).unwrap();
    let status = exited.unwrap_or_else(|| {
        panic!(
            "node 3 is still up on a full disk; its log:\n{}",
            &log[log.len().saturating_sub(4000)..]
        )
    });
    assert_eq!(
        status.code(),
        Some(1),
        "node 3 exited with {status:?}; its log:\n{log}"
    );
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stopped after a storage failure"))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "node 3 said why {} times:\n{log}",
        said.len()
    );
    assert!(log.len() < 64 << 10, "node 3 logged {} bytes", log.len());
    // The cluster serves on two nodes; space comes back, node 3 restarts and catches up.
    for i in 0..100u32 {
        let key = format!("after{i:03}");
        client
            .put("b", key.as_bytes(), &value, Expect::Any)
            .await
            .unwrap();
        acked.push(key);
    }
    std::fs::remove_file(&filler).unwrap();
    let restart = [
        "--id",
        "3",
        "--listen",
        &addr3,
        "--data-dir",
        &data3.display().to_string(),
    ]
    .map(str::to_owned);
    cluster.procs[2] = serve_args(dir.path(), 3, &restart);
    let three = crate::common::client(dir.path(), vec![addr3]);
    let last = acked.last().unwrap().clone();
    let mut found = None;
    for _ in 0..200 {
        found = three
            .get_with("b", last.as_bytes(), Consistency::Local, false)
            .await
            .ok()
            .flatten();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found.is_some(), "node 3 did not catch up after its restart");
    for key in &acked {
        let r = three
            .get_with("b", key.as_bytes(), Consistency::Local, false)
            .await
            .unwrap();
        assert!(r.is_some(), "{key} was acknowledged and node 3 lacks it");
    }
    drop(cluster);
    drop(tmpfs);
}
