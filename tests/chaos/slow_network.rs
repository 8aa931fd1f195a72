//! A network whose round trip exceeded the heartbeat interval committed nothing: openraft
//! gives each AppendEntries the heartbeat interval (100 ms) as its deadline, and the
//! transport used it as the call's timeout, so with 60 ms each way every AppendEntries timed
//! out and was sent again, forever, while the leader kept its place. Found by the nemesis's
//! delay fault: not one write went through in 3.6 s of 90 ms delays. An AppendEntries now
//! waits as long as a vote does (the election timeout's lower bound): an answer slower than
//! that is a failure by Raft's own measure, one faster is progress.

use std::time::Duration;

use metakv::{Expect, Kv};

use crate::cluster::Nodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_commit_when_the_round_trip_exceeds_the_heartbeat() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = Nodes::start(tmp.path(), 3).await;
    let client = nodes.client().with_timeout(Duration::from_secs(5));
    client.create_bucket("b").await.unwrap();
    nodes.net.set_delay(Duration::from_millis(60));
    for i in 0..10 {
        let key = format!("k{i}");
        let written = client.put("b", key.as_bytes(), b"v", Expect::Any).await;
        assert!(
            written.is_ok(),
            "put {i} with 60 ms between nodes (heartbeat 100 ms): {written:?}"
        );
    }
}
