//! `cluster add-node` with an address where nothing listens made the node a voter in 14 ms:
//! openraft counts a learner as caught up while the leader's log is shorter than its lag
//! threshold (5,000 entries), whether or not the learner ever answered. Two such calls left a
//! 5-voter cluster with 3 live voters, one failure away from stopping. A wiped node rejoining
//! with its old id was taken back as the voter it had been, with an empty log it could never
//! be caught up from, and a join through a follower was answered "not the leader" for a
//! minute. Now a new member stays a learner until it has acknowledged the entry that added
//! it, and is removed again if it does not within a bound; a join of an id that is already a
//! voter is refused with what to do; and a join goes through any member.

use std::time::Duration;

use crate::common::{Cluster, config};
use metakv::{Error, Kv, Node, store::Expect};

fn quick(c: &mut metakv::NodeConfig) {
    c.request_timeout = Duration::from_secs(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_where_nothing_listens_is_never_made_a_voter() {
    let cluster = Cluster::start_with(3, quick).await;
    let leader = cluster.node(cluster.leader().await).clone();
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let added = leader.add_node(4, &nobody).await;
    assert!(
        matches!(&added, Err(Error::Unavailable(m)) if m.contains("node 4") && m.contains("catch up")),
        "adding a node where nothing listens answered {added:?}"
    );
    let members = leader.node_status().members;
    assert_eq!(
        members.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(),
        vec![(1, true), (2, true), (3, true)],
        "the membership is not as it was"
    );
    // The cluster takes the next change: a real node 4 joins and serves.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 4, Some(leader.addr().to_owned()));
    c.join_token = Some(crate::common::token(&leader).await);
    quick(&mut c);
    let four = Node::start(c).await.unwrap();
    leader.create_bucket("b").await.unwrap();
    leader.put("b", b"k", b"v", Expect::Any).await.unwrap();
    let voters = leader
        .node_status()
        .members
        .iter()
        .filter(|m| m.voter)
        .count();
    assert_eq!(voters, 4);
    four.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_told_to_be_removed_and_then_rejoins_through_a_follower() {
    let mut cluster = Cluster::start_with(3, quick).await;
    let leader = cluster.leader().await;
    let wiped = if leader == 3 { 2 } else { 3 };
    let follower = (1..=3).find(|&i| i != leader && i != wiped).unwrap();
    let via = cluster.node(follower).addr().to_owned();
    cluster.node(leader).create_bucket("b").await.unwrap();
    for i in 0..100u32 {
        cluster
            .node(leader)
            .put("b", format!("k{i}").as_bytes(), b"v", Expect::Any)
            .await
            .unwrap();
    }
    cluster.stop(wiped).await;
    let data_dir = cluster.dir.path().join(format!("node{wiped}"));
    std::fs::remove_dir_all(&data_dir).unwrap();
    let mut c = config(cluster.dir.path(), wiped, Some(via.clone()));
    c.join_token = Some(cluster.token().await);
    quick(&mut c);
    let refused = Node::start(c.clone()).await;
    let message = match &refused {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a wiped voter was taken back"),
    };
    assert!(
        message.contains(&format!("remove-node {wiped}")),
        "the refusal does not say what to do: {message}"
    );
    cluster.node(follower).remove_node(wiped).await.unwrap();
    std::fs::remove_dir_all(&data_dir).ok();
    let back = Node::start(c).await.unwrap();
    let target = cluster.node(leader).node_status().last_log_index;
    for _ in 0..200 {
        if back.node_status().applied >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = back.node_status();
    assert!(
        status.applied >= target,
        "the rejoined node is at {status:?}"
    );
    assert!(
        status.members.iter().any(|m| m.id == wiped && m.voter),
        "the rejoined node is not a voter: {status:?}"
    );
    back.shutdown().await;
    cluster.shutdown().await;
}
