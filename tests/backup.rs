//! Backup and restore with real nodes (redb files, TCP on loopback): a backup pulled through
//! a follower, restored into the first node of a new cluster that others then join; and every
//! way a backup or a restore can be refused.

mod common;

use std::path::Path;

use common::{Cluster, config, load, local_records};
use metakv::api::{ClientReply, ClientRequest};
use metakv::{BucketState, Error, Expect, Kv, Node, Record};
use metakv_raft::restore::{self, restore_node};

/// The active buckets; a paused one refuses reads.
const BUCKETS: [&str; 2] = ["users", "config"];

async fn copies(node: &Node) -> Vec<Vec<(Vec<u8>, Record)>> {
    let mut out = Vec::new();
    for b in BUCKETS {
        out.push(local_records(node, b).await);
    }
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_pulled_through_a_follower_restores_into_a_new_cluster() {
    // The backup and the archive outlive the first cluster's directory.
    let keep = tempfile::tempdir().unwrap();
    let root = keep.path().display().to_string();
    let cluster = Cluster::start_with(3, |c| c.hibernation.archive_roots.push(root.clone())).await;
    let leader = cluster.leader().await;
    let follower = cluster.node(if leader == 1 { 2 } else { 1 });
    let kept = load(follower, "users", 2000, 4).await;
    follower.create_bucket("config").await.unwrap();
    for i in 0..20 {
        let key = format!("service/{i}");
        follower
            .put("config", key.as_bytes(), b"{\"replicas\":3}", Expect::Any)
            .await
            .unwrap();
    }
    // A paused bucket: the backup holds its state and record, not its data, and the restored
    // cluster resumes it from the same archive.
    load(follower, "cold", 300, 1).await;
    let archive = keep.path().join("archive");
    follower
        .pause_bucket("cold", archive.to_str().unwrap())
        .await
        .unwrap();
    let before = copies(cluster.node(leader)).await;
    let cold = follower.bucket("cold").await.unwrap();
    assert_eq!((cold.state, cold.records), (BucketState::Paused, 0));
    let users = follower.bucket("users").await.unwrap();
    assert_eq!((users.records, users.tombstones), (kept.len() as u64, 1500));

    let file = keep.path().join("metakv.backup");
    let mut seen = Vec::new();
    let info = follower
        .backup(&file, |done, total| seen.push((done, total)))
        .await
        .unwrap();
    assert_eq!(info.node, leader, "taken on the leader");
    assert!(file.exists());
    assert!(
        !keep.path().join("metakv.backup.partial").exists(),
        "nothing partial is left"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), info.bytes);
    assert_eq!(seen.first(), Some(&(0, info.bytes)));
    assert_eq!(seen.last(), Some(&(info.bytes, info.bytes)));
    // users, config, cold (paused: no records) and metakv's own `_sys`, which holds the
    // paused bucket's record.
    assert_eq!(info.buckets, 4);
    assert!((2021..2040).contains(&info.records), "{info:?}");
    assert!(info.applied >= info.rev && info.rev > 0, "{info:?}");
    // The node dropped its copy once the client had it.
    let backups = cluster
        .dir
        .path()
        .join(format!("node{leader}"))
        .join("backups");
    assert_eq!(files_in(&backups), Vec::<String>::new());
    cluster.shutdown().await;

    // A new cluster from the backup: node 1 restored, nodes 2 and 3 join it and get a snapshot.
    let fresh = tempfile::tempdir().unwrap();
    let restored = restore_node(
        &fresh.path().join("node1"),
        std::fs::File::open(&file).unwrap(),
        1,
        "127.0.0.1:7379",
    )
    .unwrap();
    assert_eq!(
        (
            restored.rev,
            restored.records,
            restored.start.map(|l| l.index)
        ),
        (info.rev, info.records, Some(info.applied))
    );
    let first = Node::start(config(fresh.path(), 1, None)).await.unwrap();
    let seed = first.addr().to_owned();
    let mut nodes = vec![first];
    for id in 2..=3 {
        let mut c = config(fresh.path(), id, Some(seed.clone()));
        c.join_token = Some(common::token(&nodes[0]).await);
        nodes.push(Node::start(c).await.unwrap());
    }
    // The restored node recorded the address it serves on, not the one given to restore.
    let status = nodes[0].cluster_status().await.unwrap();
    let mut addrs: Vec<(u64, String)> = status
        .nodes
        .iter()
        .map(|n| (n.member.id, n.member.addr.clone()))
        .collect();
    addrs.sort();
    let want: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| (n.id(), n.addr().to_owned()))
        .collect();
    assert_eq!(addrs, want);

    // Every record, revision and tombstone, on every node of the new cluster.
    let rev = nodes[0]
        .put("config", b"service/new", b"{}", Expect::Absent)
        .await
        .unwrap();
    let metakv::Applied::Written { rev } = rev else {
        panic!("{rev:?}")
    };
    assert!(
        rev > info.applied,
        "new revisions go on after the backup's: {rev}"
    );
    let applied = nodes[0].status().await.unwrap().applied;
    for node in &nodes {
        for _ in 0..200 {
            if node.node_status().applied >= applied {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let mut now = copies(node).await;
        let new = now[1]
            .iter()
            .position(|(k, _)| k == b"service/new")
            .unwrap();
        assert_eq!(now[1].remove(new).1.rev, rev);
        assert_eq!(now, before, "node {}", node.id());
    }
    // A watcher's cursor from the old cluster still means something: only the new write is
    // after the backup.
    let mut watch = nodes[1].watch("config", b"", info.applied + 1);
    match watch.next().await.unwrap() {
        metakv::WatchEvent::Change { key, record } => {
            assert_eq!((key.as_slice(), record.rev), (&b"service/new"[..], rev))
        }
        other => panic!("{other:?}"),
    }
    // The paused bucket resumes from its archive in the new cluster.
    assert_eq!(
        nodes[1].bucket("cold").await.unwrap().state,
        BucketState::Paused
    );
    nodes[1].resume_bucket("cold", None).await.unwrap();
    let back = nodes[1].bucket("cold").await.unwrap();
    assert_eq!((back.state, back.records), (BucketState::Active, 300));
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_backups_and_restores_are_refused_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    load(node, "users", 200, 2).await;
    let dir = cluster.dir.path();
    let file = dir.join("good.backup");
    node.backup(&file, |_, _| {}).await.unwrap();
    let good = std::fs::read(&file).unwrap();

    // Into a dir that already holds a node: refused, the dir untouched.
    let data = dir.join("node1");
    let held = files_in(&data);
    let e = restore_node(&data, good.as_slice(), 1, "127.0.0.1:7379").unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
    assert_eq!(files_in(&data), held);

    // A cut backup, a flipped byte, and something that is not a backup: refused, and the new
    // dir holds nothing a node could start on.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (what, bytes, says) in [
        ("cut", &good[..good.len() - 10], "truncated"),
        ("flipped", &flipped[..], "crc"),
        (
            "not a backup",
            &b"hello, this is not an archive"[..],
            "magic",
        ),
    ] {
        let target = dir.join(format!("restore-{}", what.replace(' ', "-")));
        let e = restore_node(&target, bytes, 1, "127.0.0.1:7379").unwrap_err();
        assert!(e.to_string().contains(says), "{what}: {e}");
        assert_eq!(files_in(&target), Vec::<String>::new(), "{what}");
    }

    // A restore that was cut short (its marker left): a node refuses to start there.
    let partial = dir.join("restore-partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join(restore::PARTIAL), b"").unwrap();
    let mut c = config(dir, 9, None);
    c.data_dir = partial;
    let e = Node::start(c).await.unwrap_err();
    assert!(e.to_string().contains("unfinished restore"), "{e}");

    // Chunks of a backup the node does not hold, or of a node that is not a member.
    let e = node
        .request(ClientRequest::BackupChunk {
            node: 1,
            id: 42,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("holds no backup 42"), "{e}");
    let e = node
        .request(ClientRequest::BackupEnd { node: 7, id: 1 })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("node 7 is not a member"), "{e}");

    // A backup to a place that cannot be written: an error, no file, and the node's copy is
    // released.
    let e = node
        .backup(&dir.join("no-such-dir").join("b"), |_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    let backups = data.join("backups");
    assert_eq!(files_in(&backups), Vec::<String>::new());

    // At most four held at once; the fifth is told to wait, and an ended one makes room.
    let mut held = Vec::new();
    for _ in 0..4 {
        match node.request(ClientRequest::BackupBegin).await.unwrap() {
            ClientReply::Backup(info) => held.push(info),
            other => panic!("{other:?}"),
        }
    }
    let e = node.request(ClientRequest::BackupBegin).await.unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e}");
    // Past the end of a held backup.
    let e = node
        .request(ClientRequest::BackupChunk {
            node: 1,
            id: held[0].id,
            offset: held[0].bytes + 1,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    node.request(ClientRequest::BackupEnd {
        node: 1,
        id: held[0].id,
    })
    .await
    .unwrap();
    assert!(node.request(ClientRequest::BackupBegin).await.is_ok());
    assert_eq!(files_in(&backups).len(), 4);
    cluster.shutdown().await;
}
