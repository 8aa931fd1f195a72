//! Hibernation on real nodes: pause and resume a bucket through the cluster, a corrupt or
//! missing archive, and the leader killed at every step of a pause and in the middle of a
//! resume. After the janitor, a bucket is `Active` with all its data or `Paused` with a
//! complete archive, never anything else.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::gate::{Gate, GatedArchives, Point};
use common::{Cluster, applied_on, load, local_records};
use metakv::{
    BucketState, Error, HibernationStatus, Kv, Node, Phase, Record, RejectionKind, store::Expect,
};

/// Writes `n` records and deletes every tenth: a bucket with records and tombstones.
async fn fill(node: &Node, bucket: &str, n: usize) -> Vec<(Vec<u8>, Record)> {
    let keys = load(node, bucket, n, 1).await;
    for chunk in keys.iter().step_by(10).collect::<Vec<_>>().chunks(32) {
        let deletes = chunk.iter().map(|k| node.delete(bucket, k, Expect::Any));
        for r in futures_util::future::join_all(deletes).await {
            r.unwrap();
        }
    }
    local_records(node, bucket).await
}

/// Every running node's copy of `bucket`, once each has applied everything that `via` or any
/// other running node has (a change made through the leader may not have reached `via` yet).
async fn copies(cluster: &Cluster, via: &Node, bucket: &str) -> Vec<Vec<(Vec<u8>, Record)>> {
    let mut index = applied_on(via).await;
    for node in cluster.running() {
        index = index.max(node.node_status().applied);
    }
    cluster.applied(index).await;
    let mut out = Vec::new();
    for node in cluster.running() {
        out.push(local_records(node, bucket).await);
    }
    out
}

fn archive_uri(cluster: &Cluster) -> String {
    format!("file://{}", cluster.dir.path().join("archive").display())
}

/// Files under the archive directory (any op).
fn archive_files(cluster: &Cluster) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&cluster.dir.path().join("archive"), &mut out);
    out.sort();
    out
}

fn kind(e: &Error) -> Option<RejectionKind> {
    e.rejection_kind()
}

/// Waits until the janitor (or the operation) has left `bucket` in `Active` or `Paused`.
async fn settled(node: &Node, bucket: &str) -> HibernationStatus {
    for _ in 0..200 {
        if let Ok(s) = node.hibernation(bucket).await
            && matches!(s.state, BucketState::Active | BucketState::Paused)
            && s.running.is_none()
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("bucket {bucket} did not settle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_and_resume_keep_every_record_revision_and_tombstone() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let via = cluster.node(if leader == 1 { 2 } else { 1 }); // a follower: requests forward
    let before = fill(via, "users", 10_000).await;
    assert_eq!(before.len(), 10_000);
    assert_eq!(before.iter().filter(|(_, r)| r.deleted).count(), 1_000);
    via.create_bucket("other").await.unwrap();

    // Another bucket stays writable throughout.
    let stop = Arc::new(AtomicU64::new(0));
    let writer = {
        let node = via.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                node.put("other", format!("k{n}").as_bytes(), b"v", Expect::Any)
                    .await
                    .expect("writes to another bucket succeed during pause and resume");
                n += 1;
            }
            n
        })
    };

    let uri = archive_uri(&cluster);
    let op = via.start_pause("users", &uri).await.unwrap();
    // From the moment Pausing applies, a write is refused, never silently taken.
    let refused = via
        .put("users", b"user/000001", b"late", Expect::Any)
        .await
        .unwrap_err();
    assert_eq!(
        kind(&refused),
        Some(RejectionKind::BucketPaused),
        "{refused}"
    );
    let again = via.start_pause("users", &uri).await.unwrap_err();
    assert!(
        matches!(&again, Error::Busy(m) if m.contains(&op.to_string()))
            || kind(&again) == Some(RejectionKind::BucketState),
        "{again}"
    );
    let mut seen_progress = false;
    let paused = via
        .hibernation_wait("users", op, |s| seen_progress |= s.running.is_some())
        .await
        .unwrap();
    assert!(seen_progress, "a running pause reports its progress");
    assert_eq!(paused.state, BucketState::Paused);
    let record = paused.record.unwrap();
    let manifest = record.manifest.as_ref().unwrap();
    assert_eq!(
        (manifest.records, manifest.bucket.as_str()),
        (10_000, "users")
    );
    let files = archive_files(&cluster);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| f.to_string_lossy().contains(&record.objects))
    );
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), manifest.bytes);

    // Paused: reads and writes answer BucketPaused on every node; the data is gone.
    cluster.applied(applied_on(via).await).await;
    for node in cluster.running() {
        let e = node.get("users", b"user/000002").await.unwrap_err();
        assert_eq!(kind(&e), Some(RejectionKind::BucketPaused), "{e}");
        let e = node
            .put("users", b"user/000002", b"x", Expect::Any)
            .await
            .unwrap_err();
        assert_eq!(kind(&e), Some(RejectionKind::BucketPaused), "{e}");
        let info = node.bucket("users").await.unwrap();
        assert_eq!(
            (info.state, info.records, info.tombstones),
            (BucketState::Paused, 0, 0)
        );
    }
    let e = via.start_pause("users", &uri).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::BucketState), "{e}");
    let e = via.start_resume("nobody", None).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::BucketNotFound), "{e}");

    let resumed = cluster
        .node(leader)
        .resume_bucket("users", None)
        .await
        .unwrap();
    assert_eq!(resumed.state, BucketState::Active);
    assert_eq!(resumed.record.unwrap().phase, Phase::Done);
    for copy in copies(&cluster, via, "users").await {
        assert!(
            copy == before,
            "every record, revision and tombstone is back"
        );
    }
    via.put("users", b"user/000001", b"after", Expect::Any)
        .await
        .unwrap();

    stop.store(1, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_moved_or_foreign_archive_is_refused_and_the_bucket_stays_paused() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let node = cluster.node(leader);
    let before = fill(node, "users", 3_000).await;
    let uri = archive_uri(&cluster);
    let paused = node.pause_bucket("users", &uri).await.unwrap();
    let objects = paused.record.unwrap().objects;
    let dir = cluster.dir.path().join("archive").join(&objects);
    let archive = dir.join("archive.mkva");
    let still_paused = |s: &HibernationStatus| {
        assert_eq!(s.state, BucketState::Paused);
    };

    // One byte flipped in the middle: a chunk's crc no longer matches. The restore of the
    // chunks before it is dropped again.
    let good = std::fs::read(&archive).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    std::fs::write(&archive, &bad).unwrap();
    let e = node.resume_bucket("users", None).await.unwrap_err();
    assert!(
        matches!(&e, Error::Archive(m) if m.contains("rolled back") && (m.contains("crc") || m.contains("frame"))),
        "{e}"
    );
    still_paused(&node.hibernation("users").await.unwrap());
    cluster.applied(applied_on(node).await).await;
    for n in cluster.running() {
        let info = n.bucket("users").await.unwrap();
        assert_eq!(
            (info.state, info.records, info.tombstones),
            (BucketState::Paused, 0, 0)
        );
    }

    // The archive moved away: refused before anything changes.
    let moved = cluster.dir.path().join("moved");
    std::fs::write(&archive, &good).unwrap();
    std::fs::rename(cluster.dir.path().join("archive"), &moved).unwrap();
    let e = node.start_resume("users", None).await.unwrap_err();
    assert!(matches!(&e, Error::Archive(_)), "{e}");
    still_paused(&node.hibernation("users").await.unwrap());

    // A manifest of another format version.
    let moved_manifest = moved.join(&objects).join("manifest.json");
    let text = std::fs::read_to_string(&moved_manifest).unwrap();
    std::fs::write(
        &moved_manifest,
        text.replacen("\"format\": 1", "\"format\": 99", 1),
    )
    .unwrap();
    let moved_uri = format!("file://{}", moved.display());
    let e = node
        .start_resume("users", Some(&moved_uri))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Archive(m) if m.contains("manifest format 99")),
        "{e}"
    );
    still_paused(&node.hibernation("users").await.unwrap());
    std::fs::write(&moved_manifest, text).unwrap();

    // Resumed from where it moved, with everything as it was.
    node.resume_bucket("users", Some(&moved_uri)).await.unwrap();
    for copy in copies(&cluster, node, "users").await {
        assert!(copy == before);
    }
    cluster.shutdown().await;
}

/// Three nodes whose archives go through one gate.
async fn gated_cluster() -> (Arc<Gate>, Cluster) {
    let gate = Gate::new();
    let archives = GatedArchives(Arc::clone(&gate));
    let cluster = Cluster::start_with(3, |c| {
        c.hibernation.archives = Arc::new(archives.clone());
    })
    .await;
    (gate, cluster)
}

/// Restarts the killed node and checks that every copy of `users` is `before`.
async fn restart_and_compare(
    cluster: &mut Cluster,
    killed: u64,
    via: u64,
    before: &[(Vec<u8>, Record)],
) {
    cluster.restart(killed).await;
    for copy in copies(cluster, cluster.node(via), "users").await {
        assert!(copy == before, "no record lost");
    }
}

/// Pauses a bucket with the leader's archive held at `point`, kills the leader there, and
/// returns how the janitor of the next leader left it.
async fn kill_leader_during_pause(point: Option<Point>) {
    let (gate, mut cluster) = gated_cluster().await;
    let leader = cluster.leader().await;
    let before = fill(cluster.node(leader), "users", 3_000).await;
    let uri = archive_uri(&cluster);
    match point {
        Some(p) => {
            gate.arm(p);
            cluster
                .node(leader)
                .start_pause("users", &uri)
                .await
                .unwrap();
            gate.reached(p).await;
        }
        // After the drop: the pause completed.
        None => {
            cluster
                .node(leader)
                .pause_bucket("users", &uri)
                .await
                .unwrap();
        }
    }
    tracing::info!(?point, leader, "--- killing the leader");
    cluster.stop(leader).await;
    let next = cluster.leader().await;
    let status = settled(cluster.node(next), "users").await;
    match point {
        Some(_) => {
            assert_eq!(status.state, BucketState::Active, "{status:?}");
            let record = status.record.unwrap();
            assert_eq!(record.phase, Phase::RolledBack);
            assert!(
                archive_files(&cluster).is_empty(),
                "the partial archive is deleted"
            );
        }
        None => {
            assert_eq!(status.state, BucketState::Paused, "{status:?}");
            assert_eq!(archive_files(&cluster).len(), 2, "the archive is complete");
            cluster
                .node(next)
                .resume_bucket("users", None)
                .await
                .unwrap();
        }
    }
    restart_and_compare(&mut cluster, leader, next, &before).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_before_export_rolls_back_to_active() {
    kill_leader_during_pause(Some(Point::ArchiveUpload)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_export_rolls_back_to_active() {
    kill_leader_during_pause(Some(Point::ArchiveComplete)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_after_verify_rolls_back_to_active() {
    kill_leader_during_pause(Some(Point::ManifestRead)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_after_drop_leaves_it_paused_and_resumable() {
    kill_leader_during_pause(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_restore_drops_the_partial_restore_and_resumes_later() {
    let (gate, mut cluster) = gated_cluster().await;
    let leader = cluster.leader().await;
    let node = cluster.node(leader);
    // Enough for several chunks, so that half of the archive is a restored chunk or more.
    let before = fill(node, "users", 10_000).await;
    node.pause_bucket("users", &archive_uri(&cluster))
        .await
        .unwrap();
    gate.arm(Point::ArchiveHalfRead);
    node.start_resume("users", None).await.unwrap();
    gate.reached(Point::ArchiveHalfRead).await;
    let mut restored = 0;
    for _ in 0..100 {
        restored = node
            .bucket("users")
            .await
            .map_or(0, |b| b.records + b.tombstones);
        if restored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        restored > 0 && restored < 10_000,
        "the restore is partial: {restored}"
    );
    cluster.stop(leader).await;
    let next = cluster.leader().await;
    let status = settled(cluster.node(next), "users").await;
    assert_eq!(status.state, BucketState::Paused, "{status:?}");
    let info = cluster.node(next).bucket("users").await.unwrap();
    assert_eq!(
        (info.records, info.tombstones),
        (0, 0),
        "the partial restore is dropped"
    );
    cluster
        .node(next)
        .resume_bucket("users", None)
        .await
        .unwrap();
    restart_and_compare(&mut cluster, leader, next, &before).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_bucket_whose_archive_vanished_is_reported_and_kept() {
    let cluster = Cluster::start_with(1, |c| c.hibernation.janitor_interval_ms = 200).await;
    let node = cluster.node(1);
    fill(node, "users", 100).await;
    node.pause_bucket("users", &archive_uri(&cluster))
        .await
        .unwrap();
    std::fs::remove_dir_all(cluster.dir.path().join("archive")).unwrap();
    let mut noted = None;
    for _ in 0..100 {
        let s = node.hibernation("users").await.unwrap();
        if let Some(e) = s.record.and_then(|r| r.error) {
            noted = Some((s.state, e));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, error) = noted.expect("the janitor notes the missing archive");
    assert_eq!(state, BucketState::Paused);
    assert!(error.contains("archive missing"), "{error}");
    let e = node.start_resume("users", None).await.unwrap_err();
    assert!(matches!(&e, Error::Archive(_)), "{e}");
    assert_eq!(
        node.bucket("users").await.unwrap().state,
        BucketState::Paused
    );
    cluster.shutdown().await;
}

/// A local archive root must be the same directory on every voter: a pause to a directory
/// only the leader has would leave a bucket that another leader cannot resume. The leader
/// writes a marker that every other voter must read back before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_to_a_root_a_voter_cannot_see_is_refused_before_anything_changes() {
    // Every node has the shared root and one of its own.
    let mut cluster = Cluster::start_with(3, |c| {
        let dir = c.data_dir.parent().unwrap().to_owned();
        let own = dir.join(format!("own{}", c.id));
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        c.hibernation.archive_roots = vec![
            dir.join("shared").display().to_string(),
            own.display().to_string(),
        ];
    })
    .await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let node = cluster.node(follower).clone();
    fill(&node, "users", 100).await;
    let own = cluster.dir.path().join(format!("own{leader}"));

    let e = node
        .pause_bucket("users", &own.join("users").display().to_string())
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("not the same directory on every voter"),
        "{message}"
    );
    for id in (1..=3).filter(|&id| id != leader) {
        assert!(
            message.contains(&format!("node {id}: ")),
            "names node {id}: {message}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&own).unwrap().count(),
        0,
        "nothing is left in {}",
        own.display()
    );
    assert_eq!(
        node.bucket("users").await.unwrap().state,
        BucketState::Active
    );

    tracing::info!("--- a voter that is down cannot confirm either");
    let shared = cluster.dir.path().join("shared");
    let down = (1..=3).find(|&id| id != leader && id != follower).unwrap();
    cluster.stop(down).await;
    let e = node
        .pause_bucket("users", &shared.join("users").display().to_string())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("node {down} did not answer")),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    assert_eq!(
        node.bucket("users").await.unwrap().state,
        BucketState::Active
    );

    tracing::info!("--- the shared root, every voter up: the pause goes through");
    cluster.restart(down).await;
    node.pause_bucket("users", &shared.join("users").display().to_string())
        .await
        .unwrap();
    assert_eq!(
        node.bucket("users").await.unwrap().state,
        BucketState::Paused
    );
    let left: Vec<_> = std::fs::read_dir(shared.join("users"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".metakv-visible")
        })
        .collect();
    assert!(left.is_empty(), "the marker was removed: {left:?}");
    cluster.shutdown().await;
}
