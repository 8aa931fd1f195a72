//! Real `metakv serve` processes: kill -9 of the leader, continued service, the old node
//! restarted on its files catching up.

mod common;

use common::serve;
use metakv::{Client, Consistency, Expect, Kv, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_process_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = vec![serve(dir.path(), 1, "127.0.0.1:0", None)];
    let seed = procs[0].addr.clone();
    for id in 2..=3 {
        procs.push(serve(dir.path(), id, "127.0.0.1:0", Some(&seed)));
    }
    let endpoints: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
    let client = Client::new(endpoints.clone(), "metakv");
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
        let status = Client::new(vec![addr.clone()], "metakv")
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
    let client = Client::new(survivors.clone(), "metakv");
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
    let restarted = Client::new(vec![old_addr.clone()], "metakv");
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
