//! A 3-node cluster in one process: node 1 starts the cluster, nodes 2 and 3 join it with
//! join tokens, a write through a follower is forwarded to the leader, and the cluster goes on
//! when the leader stops.
//!
//! ```sh
//! cargo run --example cluster
//! ```

use std::time::Duration;

use metakv::{Expect, Kv, Node, NodeConfig, Role};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = |id: u64| NodeConfig::new(id, dir.path().join(format!("node{id}")), "127.0.0.1:0");
    let first = Node::start(config(1)).await?;
    let mut nodes = vec![first.clone()];
    for id in 2..=3 {
        // A join token is good for one node, once; the new node gets its certificate with it.
        let token = first.join_token(Duration::from_secs(60)).await?;
        let mut c = config(id);
        c.join = Some(first.addr().to_owned());
        c.join_token = Some(token.token);
        nodes.push(Node::start(c).await?);
    }
    let status = first.cluster_status().await?;
    assert_eq!(status.nodes.len(), 3, "every node joined");
    println!("{} members", status.nodes.len());

    // Any node takes any request; a follower forwards writes to the leader.
    let leader = leader_of(&nodes).await?;
    let follower = nodes.iter().find(|n| n.id() != leader).expect("a follower");
    follower.create_bucket_if_absent("config").await?;
    follower
        .put("config", b"feature-x", b"on", Expect::Any)
        .await?;
    println!(
        "written through node {}, led by node {leader}",
        follower.id()
    );

    // The leader stops; the other two elect a new one and still have the write.
    let old = nodes
        .iter()
        .position(|n| n.id() == leader)
        .expect("the leader");
    nodes.remove(old).shutdown().await;
    let survivor = &nodes[0];
    let value = survivor
        .get("config", b"feature-x")
        .await?
        .expect("the write survives its leader");
    let new_leader = leader_of(&nodes).await?;
    println!(
        "node {leader} stopped; node {new_leader} leads; feature-x = {}",
        String::from_utf8_lossy(&value.value)
    );
    for n in nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// The id of the node that leads, once one does (10 s at most).
async fn leader_of(nodes: &[Node]) -> Result<u64, Box<dyn std::error::Error>> {
    for _ in 0..100 {
        if let Some(n) = nodes.iter().find(|n| n.node_status().role == Role::Leader) {
            return Ok(n.id());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("no leader within 10 s".into())
}
