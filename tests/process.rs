//! Real `metakv serve` processes: kill -9 of the leader, continued service, the old node
//! restarted on its files catching up.

mod common;

use common::serve;
use metakv::{Consistency, Expect, Kv, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_process_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = vec![serve(dir.path(), 1, "127.0.0.1:0", None)];
    let seed = procs[0].addr.clone();
    for id in 2..=3 {
        procs.push(serve(dir.path(), id, "127.0.0.1:0", Some(&seed)));
    }
    let endpoints: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let client = common::client(dir.path(), endpoints.clone());
    client.create_bucket("b").await.unwrap();
    let mut acked = Vec::new();
    for i in 0..50u32 {
        let key = format!("before/{i}");
        client
            .put("b", key.as_bytes(), b"v", Expect::Any)
            .await
            .unwrap();
        acked.push(key);
    }
    let mut leader = None;
    for (i, addr) in endpoints.iter().enumerate() {
        let status = common::client(dir.path(), vec![addr.clone()])
            .status()
            .await
            .unwrap();
        if status.role == Role::Leader {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one node leads");
    let old_addr = procs[leader].addr.clone();
    procs[leader].child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    procs[leader].child.wait().unwrap();
    let survivors: Vec<String> = endpoints
        .iter()
        .filter(|a| **a != old_addr)
        .cloned()
        .collect();
    let client = common::client(dir.path(), survivors.clone());
    for i in 0..50u32 {
        let key = format!("after/{i}");
        client
            .put("b", key.as_bytes(), b"v", Expect::Any)
            .await
            .unwrap();
        acked.push(key);
    }
    for key in &acked {
        assert!(
            client.get("b", key.as_bytes()).await.unwrap().is_some(),
            "{key} lost"
        );
    }
    // The killed node restarts on its files and its address, and catches up.
    let id = leader as u64 + 1;
    procs[leader] = serve(dir.path(), id, &old_addr, None);
    let restarted = common::client(dir.path(), vec![old_addr.clone()]);
    let mut count = 0;
    for _ in 0..200 {
        count = restarted
            .scan("b", b"", None, 1000, false, Consistency::Local)
            .await
            .map_or(0, |p| p.items.len());
        if count == acked.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count, acked.len(), "the restarted node caught up");
    assert!(restarted.get("b", b"after/49").await.unwrap().is_some());
}

/// A put through a follower while the leader was killed answered "unavailable: connection
/// closed by the peer" although the value was there: a caller could not tell "not done" from
/// "outcome unknown". A write sent without an answer is now `Error::Ambiguous`, naming the
/// write; a read in the same spot is `Unavailable` (it changed nothing); and a write that could
/// not be sent at all is `Unavailable` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_without_an_answer_is_ambiguous_not_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(dir.path(), 1, "127.0.0.1:0", None);
    let client = common::client(dir.path(), vec![node.addr.clone()])
        .with_timeout(std::time::Duration::from_millis(500));
    client.create_bucket("users").await.unwrap();
    // The pooled connection is up; the node stops answering after it.
    let pid = node.child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let put = client.put("users", b"ada", b"admin", Expect::Any).await;
    let read = client.get("users", b"ada").await;
    signal("-CONT");
    match &put {
        Err(metakv::Error::Ambiguous { what, reason }) => {
            assert!(what.contains("put users/\"ada\""), "{what}");
            assert!(!reason.is_empty());
        }
        other => panic!("a put sent without an answer answered {other:?}"),
    }
    assert!(
        put.unwrap_err()
            .to_string()
            .contains("may or may not have been applied"),
        "the message does not say the outcome is unknown"
    );
    assert!(
        matches!(read, Err(metakv::Error::Unavailable(_))),
        "a read without an answer answered {read:?}"
    );
    // It was applied after all, once the node woke: "unknown" was the right answer. A retry
    // with an expectation is refused instead of applying it twice.
    let mut got = None;
    for _ in 0..50 {
        got = client.get("users", b"ada").await.ok().flatten();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got.map(|r| r.value), Some(b"admin".to_vec()));
    let again = client
        .put("users", b"ada", b"admin", Expect::Absent)
        .await
        .unwrap();
    assert!(
        matches!(again, metakv::Applied::Conflict { .. }),
        "{again:?}"
    );

    drop(node);
    let gone = client.put("users", b"bob", b"v", Expect::Any).await;
    assert!(
        matches!(gone, Err(metakv::Error::Unavailable(_))),
        "a write to a node that is gone answered {gone:?}"
    );
}
