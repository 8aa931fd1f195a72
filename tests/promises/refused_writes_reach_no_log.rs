//! A 70 MB value was refused "over the limit", but only at apply: the entry had already been
//! appended and replicated, so six refused puts grew `raft-log.redb` from 277 MB to 1.1 GB on
//! every node. Every op is now checked (names, key and value sizes, batch sizes) before it is
//! proposed, and before a follower forwards it, so a refused request writes nothing anywhere.

use crate::common::Cluster;
use metakv::{Error, Kv, RejectionKind, store::Expect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_append_nothing_to_any_log() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.node(if leader == 1 { 2 } else { 1 }).clone();
    follower.create_bucket("b").await.unwrap();
    let last_logs = |c: &Cluster| {
        c.running()
            .map(|n| (n.id(), n.node_status().last_log_index))
            .collect::<Vec<_>>()
    };
    cluster
        .applied(cluster.node(leader).node_status().last_log_index)
        .await;
    let settled = last_logs(&cluster);
    let too_big = vec![1u8; (1 << 20) + 1];
    let long_key = vec![b'k'; 1025];
    let refusals = [
        follower.put("b", b"k", &too_big, Expect::Any).await,
        follower.put("b", &long_key, b"v", Expect::Any).await,
        follower.put("b", b"", b"v", Expect::Any).await,
        follower.put("No Such Name", b"k", b"v", Expect::Any).await,
        follower.delete("b", &long_key, Expect::Any).await,
    ];
    assert_eq!(
        last_logs(&cluster),
        settled,
        "refused writes were appended to a log"
    );
    for (i, r) in refusals.into_iter().enumerate() {
        match r {
            Err(Error::Rejected(r)) if r.kind == RejectionKind::Invalid => {}
            other => panic!("refusal {i} answered {other:?}"),
        }
    }
}
