//! A leader that could send but not hear kept the cluster from writing for as long as it
//! lasted: its heartbeats reached the followers, so they never stood for election, and no
//! answer reached it, so it never committed. Found by the nemesis's one-way partitions (3.5 s
//! without a write during 3.3 s of a deaf leader). A leader that no quorum has answered for a
//! lease now falls silent for a while (openraft's quorum-loss probe), so the others elect one
//! they can hear; it sends again later, and learns of the new term when it hears again.

use std::time::{Duration, Instant};

use metakv::{Expect, Kv};

use crate::cluster::Nodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_cannot_hear_makes_way() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = Nodes::start(tmp.path(), 3).await;
    nodes.client().create_bucket("b").await.unwrap();
    let leader = nodes.leader().await;
    let others: Vec<usize> = nodes.members().filter(|&s| s != leader).collect();
    nodes.net.cut(&others, &[leader]);
    let cut = Instant::now();
    // Through the other nodes only: the deaf leader cannot answer what it forwards.
    let client = nodes
        .client_to(
            others
                .iter()
                .map(|&s| nodes.slots[s].listen.clone())
                .collect(),
        )
        .with_timeout(Duration::from_secs(1));
    let mut written = None;
    while cut.elapsed() < Duration::from_secs(10) {
        if client.put("b", b"k", b"v", Expect::Any).await.is_ok() {
            written = Some(cut.elapsed());
            break;
        }
    }
    nodes.net.heal();
    // The lease (1 s), a silence, and an election (0.5-1 s): well within 6 s.
    assert!(
        written.is_some_and(|at| at < Duration::from_secs(6)),
        "first write {written:?} after the leader went deaf"
    );
}
