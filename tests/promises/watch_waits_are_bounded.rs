//! A watch poll's wait is chosen by the client, and the node held the poll, and the pin that
//! keeps GC off the bucket's tombstones, for as long as it asked: `Changes { wait_ms:
//! u32::MAX }` kept GC off that bucket for 49 days. The node now refuses a wait over
//! `WATCH_WAIT_MS_MAX` with a clear error, so no client can hold a poll or a pin longer.

use std::time::Duration;

use crate::common::Cluster;
use metakv::{ClientRequest, Error, Kv, RejectionKind, WATCH_WAIT_MS_MAX};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_poll_cannot_wait_longer_than_the_bound() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1).clone();
    node.create_bucket("b").await.unwrap();
    let poll = |wait_ms| ClientRequest::Changes {
        bucket: "b".into(),
        prefix: Vec::new(),
        after_rev: 0,
        limit: 10,
        wait_ms,
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), node.request(poll(u32::MAX)))
        .await
        .expect("a poll of u32::MAX ms is answered at once");
    assert!(
        matches!(&answer, Err(Error::Rejected(r)) if r.kind == RejectionKind::Invalid && r.message.contains("wait_ms")),
        "{answer:?}"
    );
    // A poll within the bound is served as before.
    let ok = node.request(poll(WATCH_WAIT_MS_MAX.min(200))).await;
    assert!(ok.is_ok(), "{ok:?}");
    cluster.shutdown().await;
}
