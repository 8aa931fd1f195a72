//! Nodes 2 and 3 started with `--join` node 1 at the same moment (a `docker compose up`)
//! left, in 1 to 2 boots of 25, a three-voter cluster running on two: node 3's `add_learner`
//! landed between the two steps of node 2's promotion, the leader answered node 2's join
//! `Unavailable` although node 2 was a voter, node 2 asked again, and the guard against wiped
//! nodes refused it ("node 2 is already a voter"); node 2 exited and stayed a dead voter.
//! Separately, `serve --id 5 --data-dir <node 3's dir>` started as a learner 5 on node 3's
//! files. Now membership changes take turns on the leader, a join carries its node's
//! incarnation (drawn on its first start, kept in its data dir) and is answered with its
//! outcome when the same incarnation asks again, and a data dir refuses another node's id or
//! another cluster's.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Proc, node_args, serve, try_serve_args, try_serve_args_then};
use metakv::{Client, ClientReply, ClientRequest, Error, Identity, Kv, Role};

fn client(dir: &Path, addr: &str) -> Client {
    crate::common::client(dir, vec![addr.to_owned()]).with_timeout(Duration::from_secs(2))
}

fn identity(dir: &Path, id: u64) -> Identity {
    Identity::read(&dir.join(format!("node{id}")))
        .unwrap()
        .expect("a started node has an identity")
}

/// A free port on 127.0.0.1, for a node that others must dial before it has started.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn serve_at(dir: &Path, id: u64, listen: &str, join: Option<&str>) -> Result<Proc, String> {
    try_serve_args(dir, id, &node_args(dir, id, listen, join))
}

/// Waits until every node in `addrs` reports the same leader and every one of `ids` is a
/// voter that answers; panics with the cluster's status after `within`.
async fn all_live_voters(dir: &Path, addrs: &[String], ids: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let status = crate::common::client(dir, addrs.to_vec())
            .with_timeout(Duration::from_secs(1))
            .cluster_status()
            .await;
        match status {
            Ok(s) => {
                let voters: Vec<u64> = s
                    .nodes
                    .iter()
                    .filter(|m| m.member.voter && m.status.is_ok())
                    .map(|m| m.member.id)
                    .collect();
                let leaders = s
                    .nodes
                    .iter()
                    .filter(|m| m.status.as_ref().is_ok_and(|st| st.role == Role::Leader))
                    .count();
                if voters == ids && leaders == 1 && s.nodes.len() == ids.len() {
                    return;
                }
                last = format!("{s:?}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every node of {ids:?} is a live voter after {within:?}: {last}");
}

/// Starts `n` nodes at once: node 1 initializes, and nodes 2..=n join through node 1
/// (`chain`: false) or each through the node before it (`chain`: true), all in the same
/// instant. Every node must come up.
fn start_together(dir: &Path, n: u64, chain: bool) -> Vec<Proc> {
    let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
    let first = serve_at(dir, 1, &addrs[0], None).unwrap();
    let joiners: Vec<_> = (2..=n)
        .map(|id| {
            let (dir, listen) = (dir.to_owned(), addrs[id as usize - 1].clone());
            let seed = match chain {
                true => addrs[id as usize - 2].clone(),
                false => addrs[0].clone(),
            };
            std::thread::spawn(move || serve_at(&dir, id, &listen, Some(&seed)))
        })
        .collect();
    let mut procs = vec![first];
    for (i, j) in joiners.into_iter().enumerate() {
        match j.join().unwrap() {
            Ok(p) => procs.push(p),
            Err(e) => panic!("node {} did not come up: {e}", i + 2),
        }
    }
    procs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_asked_again_by_the_same_node_is_answered_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let one = serve(dir.path(), 1, "127.0.0.1:0", None);
    let two = serve(dir.path(), 2, "127.0.0.1:0", Some(&one.addr));
    let incarnation = identity(dir.path(), 2).incarnation;
    // The join's answer was lost (a second step answered with an error, a dropped
    // connection): node 2 asks again, through node 1 and through itself.
    for via in [&one.addr, &two.addr] {
        let again = client(dir.path(), via)
            .request(ClientRequest::Join {
                id: 2,
                addr: two.addr.clone(),
                incarnation: Some(incarnation),
            })
            .await;
        assert!(
            matches!(again, Ok(ClientReply::Done)),
            "the same node's join asked again through {via} answered {again:?}"
        );
    }
    // A node that lost its files (another incarnation) is still refused, and so is an
    // operator's add-node of a voter's id.
    for incarnation in [Some(incarnation ^ 1), None] {
        let wiped = client(dir.path(), &one.addr)
            .request(ClientRequest::Join {
                id: 2,
                addr: two.addr.clone(),
                incarnation,
            })
            .await;
        assert!(
            matches!(&wiped, Err(Error::Rejected(r)) if r.message.contains("already a voter")),
            "a join of voter 2 by incarnation {incarnation:?} answered {wiped:?}"
        );
    }
    let addrs = [one.addr.clone(), two.addr.clone()];
    all_live_voters(dir.path(), &addrs, &[1, 2], Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_killed_during_its_join_comes_back_as_a_live_voter() {
    // Killed once the leader has it as a learner (its promotion waits for it), and once the
    // leader has made it a voter (its answer may not have reached it): either way it restarts
    // on its files with the same `--join`.
    for (stage, voter) in [("a learner", false), ("a voter", true)] {
        let dir = tempfile::tempdir().unwrap();
        let one = serve(dir.path(), 1, "127.0.0.1:0", None);
        let listen = free_addr();
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let joiner = {
            let args = node_args(dir.path(), 2, &listen, Some(&one.addr));
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                try_serve_args_then(&dir, 2, &args, |pid| pid_tx.send(pid).unwrap())
            })
        };
        let pid = pid_rx.recv().unwrap();
        let leader = client(dir.path(), &one.addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = leader.status().await.unwrap();
            if status
                .members
                .iter()
                .any(|m| m.id == 2 && (m.voter || !voter))
            {
                break;
            }
            assert!(Instant::now() < deadline, "node 2 never became {stage}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let _ = joiner.join();
        let two = serve_at(dir.path(), 2, &listen, Some(&one.addr)).unwrap_or_else(|e| {
            panic!("node 2, killed as {stage} and restarted on its files, did not come up: {e}")
        });
        let addrs = [one.addr.clone(), two.addr.clone()];
        all_live_voters(dir.path(), &addrs, &[1, 2], Duration::from_secs(15)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_together_all_end_as_live_voters() {
    for (n, chain) in [(3, false), (3, true), (5, false), (5, true)] {
        let dir = tempfile::tempdir().unwrap();
        let how = if chain {
            "each through the one before"
        } else {
            "through node 1"
        };
        tracing::info!(n, how, "a round of nodes started together");
        let started = Instant::now();
        let procs = start_together(dir.path(), n, chain);
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        let ids: Vec<u64> = (1..=n).collect();
        all_live_voters(dir.path(), &addrs, &ids, Duration::from_secs(10)).await;
        eprintln!(
            "{n} nodes {how}: all live voters {:?} after the start",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_joining_through_different_members_at_once_all_end_as_live_voters() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = start_together(dir.path(), 3, false);
    let members: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let joiners: Vec<_> = (4..=7u64)
        .map(|id| {
            let (dir, seed) = (
                dir.path().to_owned(),
                members[(id as usize - 4) % 3].clone(),
            );
            std::thread::spawn(move || serve_at(&dir, id, "127.0.0.1:0", Some(&seed)))
        })
        .collect();
    for (id, j) in (4..).zip(joiners) {
        procs.push(
            j.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("node {id} did not join: {e}")),
        );
    }
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    all_live_voters(
        dir.path(),
        &addrs,
        &(1..=7).collect::<Vec<_>>(),
        Duration::from_secs(10),
    )
    .await;
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_refuses_another_node_and_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut three = serve(dir.path(), 3, "127.0.0.1:0", None);
    client(dir.path(), &three.addr)
        .create_bucket("users")
        .await
        .unwrap();
    three.child.kill().unwrap();
    three.child.wait().unwrap();
    let data_dir = dir.path().join("node3");
    let before = files(&data_dir);
    for (args, names) in [
        (vec!["--id", "5"], ["node 3", "node 5"]),
        (
            vec!["--id", "3", "--cluster-id", "other"],
            ["\"metakv\"", "\"other\""],
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_metakv"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "serve {args:?} on node 3's dir: {stderr}"
        );
        assert!(
            names.iter().all(|n| stderr.contains(n)),
            "serve {args:?}: the refusal names neither {names:?}: {stderr}"
        );
        assert_eq!(
            files(&data_dir),
            before,
            "serve {args:?} changed node 3's files"
        );
    }
    // The library refuses the same way.
    let mut config = crate::common::config(dir.path(), 5, None);
    config.data_dir = data_dir.clone();
    let refused = metakv::Node::start(config).await;
    assert!(
        matches!(&refused, Err(e) if e.rejection_kind() == Some(metakv::RejectionKind::Invalid)),
        "Node::start of node 5 on node 3's dir answered {:?}",
        refused.map(|n| n.id())
    );
    assert_eq!(
        files(&data_dir),
        before,
        "Node::start changed node 3's files"
    );
}
