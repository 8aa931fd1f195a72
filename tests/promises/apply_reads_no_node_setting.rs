//! Node 1 configured with `limits.value_bytes_max = 4 MiB`, nodes 2 and 3 with the default
//! 1 MiB: a 2 MiB put through node 1 was acknowledged, but only node 1 applied it. The others
//! refused the same log entry at apply with their own limit, `check` was clean everywhere, and
//! after node 1 went down the key was gone. Apply now checks only the compiled ceilings, which
//! every node shares; a node's configured limit is checked before it proposes or forwards a
//! write, so what is acknowledged is applied alike on every node.

use crate::common::{Cluster, local_records};
use metakv::{Consistency, Kv, store::Expect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_survives_nodes_with_different_limits() {
    let mut cluster = Cluster::start_with(3, |c| {
        if c.id == 1 {
            c.value_bytes_max = 4 << 20;
        }
    })
    .await;
    let leader = cluster.leader().await;
    assert_eq!(leader, 1, "the node that initialized leads");
    let node1 = cluster.node(1).clone();
    node1.create_bucket("b").await.unwrap();
    let value = vec![9u8; 2 << 20];
    let applied = node1.put("b", b"big", &value, Expect::Any).await.unwrap();
    let metakv::store::Applied::Written { rev } = applied else {
        panic!("the put answered {applied:?}");
    };
    cluster.applied(rev).await;
    for node in cluster.running() {
        let records = local_records(node, "b").await;
        assert_eq!(
            records
                .iter()
                .map(|(k, r)| (k.as_slice(), r.rev))
                .collect::<Vec<_>>(),
            vec![(b"big".as_slice(), rev)],
            "node {} does not hold the acknowledged put",
            node.id()
        );
    }
    cluster.stop(1).await;
    let node2 = cluster.node(2).clone();
    let record = node2
        .get_with("b", b"big", Consistency::Linearizable, false)
        .await
        .unwrap()
        .expect("the acknowledged put outlives node 1");
    assert_eq!((record.rev, record.value.len()), (rev, 2 << 20));
    cluster.shutdown().await;
}
