//! A Raft call that openraft cancelled left its connection in place with the answer still to
//! come, so the next call on it read that answer as its own. openraft wraps each heartbeat in
//! its own timeout (the heartbeat interval): while a partition held a follower's answers, the
//! leader's heartbeats were cancelled one after another; at heal, the followers' stale
//! "success" answers to heartbeats sent before the partition were taken as answers to the
//! heartbeats sent after it, and a leader that had been replaced confirmed a read index with
//! them and served a stale linearizable read (found by the chaos suite, seed 2006: a read
//! through the old leader saw revision 4519 after 4609 was acknowledged). A call now takes
//! its connection out while it is under way: a call that does not finish drops it.

use std::time::Duration;

use metakv_raft::network::Network;
use metakv_raft::types::Vote;
use metakv_raft::wire::{Hello, HelloReply, Reply, Request, read_frame, write_frame};
use metakv_raft::{NodeAddr, TypeConfig};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio::net::TcpListener;

/// A peer that answers each AppendEntries with a higher vote naming the request's term, the
/// very first one only after 300 ms.
async fn slow_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let first = std::sync::Arc::clone(&first);
            tokio::spawn(async move {
                let _: Hello = read_frame(&mut stream).await.unwrap().unwrap();
                write_frame(&mut stream, &HelloReply::Welcome { node_id: 2 })
                    .await
                    .unwrap();
                while let Ok(Some(Request::AppendEntries(rpc))) = read_frame(&mut stream).await {
                    if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let term = rpc.vote.leader_id.term;
                    let answer = AppendEntriesResponse::HigherVote(Vote::new(term, 2));
                    if write_frame(&mut stream, &Reply::AppendEntries(answer))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn heartbeat(term: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    }
}

#[tokio::test]
async fn a_cancelled_call_leaves_no_answer_for_the_next() {
    let addr = slow_peer().await;
    let mut network = Network {
        cluster_id: "c".into(),
        node_id: 1,
        append_timeout_min: Duration::from_secs(1),
        // The peer is a bare frame server of this crate: no certificates below the library.
        tls: None,
    };
    let mut peer = network.new_client(2, &NodeAddr { addr }).await;
    let option = || RPCOption::new(Duration::from_secs(1));
    // Cancelled from outside, as openraft's heartbeat worker does, before the answer comes.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        peer.append_entries(heartbeat(1), option()),
    )
    .await;
    assert!(cancelled.is_err(), "the first call was not cancelled");
    let answer = peer.append_entries(heartbeat(2), option()).await;
    match answer {
        Ok(AppendEntriesResponse::HigherVote(v)) => assert_eq!(
            v.leader_id.term, 2,
            "the second call got the answer to the first"
        ),
        other => panic!("the second call answered {other:?}"),
    }
}
