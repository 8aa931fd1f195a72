//! What the cluster benches share: a 3-node cluster in this process and a bounded fan-out.

#![allow(dead_code)]

use std::time::Duration;

use metakv::{Kv, Node, NodeConfig, Role};

/// Requests in flight at once when loading.
pub const IN_FLIGHT: usize = 256;

/// Runs `f(0..n)` with [`IN_FLIGHT`] of them in flight at a time.
pub async fn many<F, Fut>(n: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(f)
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// Three nodes under `dir` (node 1 initializes, the others join), each configured by `tune`;
/// returns them and the leader.
pub async fn cluster(dir: &std::path::Path, tune: impl Fn(&mut NodeConfig)) -> (Vec<Node>, Node) {
    let config = |id: u64, join: Option<String>| {
        let mut c = NodeConfig::new(id, dir.join(format!("node{id}")), "127.0.0.1:0");
        c.join = join;
        c.hibernation.archive_roots = vec![dir.display().to_string()];
        tune(&mut c);
        c
    };
    let first = Node::start(config(1, None)).await.unwrap();
    let seed = first.addr().to_owned();
    let mut nodes = vec![first];
    for id in 2..=3 {
        let mut c = config(id, Some(seed.clone()));
        c.join_token = Some(
            nodes[0]
                .join_token(Duration::from_secs(600))
                .await
                .unwrap()
                .token,
        );
        nodes.push(Node::start(c).await.unwrap());
    }
    let leader = loop {
        if let Some(l) = nodes.iter().find(|n| n.node_status().role == Role::Leader) {
            break l.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (nodes, leader)
}

/// Creates `bucket` and writes `n` records of `value` through `node`, keys from `key`.
pub async fn load(
    node: &Node,
    bucket: &str,
    n: usize,
    key: impl Fn(usize) -> Vec<u8>,
    value: &[u8],
) {
    use metakv::{Kv, store::Expect};
    node.create_bucket(bucket).await.unwrap();
    many(n, |i| {
        let key = key(i);
        async move {
            node.put(bucket, &key, value, Expect::Any).await.unwrap();
        }
    })
    .await;
}
