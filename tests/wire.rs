//! Bad input over the wire: garbage, an oversized length, a wrong cluster id, a truncated
//! frame, raft RPCs from a client. The node answers with an error or closes that connection,
//! and keeps serving everyone else.

mod common;

use std::time::Duration;

use common::Cluster;
use metakv::{Client, Expect, Kv};
use metakv_raft::network::{CallError, Conn};
use metakv_raft::wire::{Hello, HelloReply, PROTOCOL_VERSION, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` on a fresh connection and returns what the node wrote back before closing.
async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.shutdown().await.ok();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("the node closes the connection")
        .ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_connections_are_refused_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    let addr = node.addr().to_owned();
    node.create_bucket("b").await.unwrap();
    let hello = |cluster_id: &str, protocol| {
        encode_frame(&Hello {
            cluster_id: cluster_id.into(),
            from: None,
            protocol,
        })
    };

    tracing::info!("--- garbage instead of a hello");
    let reply = send_raw(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("bad handshake")),
        "{answer:?}"
    );

    tracing::info!("--- an oversized length is refused before anything is read");
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 4]);
    let reply = send_raw(&addr, &huge).await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("over the limit")),
        "{answer:?}"
    );

    tracing::info!("--- wrong cluster id, wrong protocol version");
    let err = Conn::dial(&addr, "other-cluster", None).await.unwrap_err();
    assert!(
        matches!(err, CallError::Refused { ref reason, .. } if reason.contains("cluster id")),
        "{err}"
    );
    let reply = send_raw(&addr, &hello("metakv", PROTOCOL_VERSION + 1)).await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("protocol version")),
        "{answer:?}"
    );
    let client = Client::new(vec![addr.clone()], "other-cluster");
    let err = client.get("b", b"k").await.unwrap_err();
    assert!(err.to_string().contains("cluster id"), "{err}");

    tracing::info!("--- a truncated frame and a damaged frame after a good hello");
    let mut bytes = hello("metakv", PROTOCOL_VERSION);
    let frame = encode_frame(&metakv_raft::wire::Request::SnapshotDone);
    bytes.extend_from_slice(&frame[..frame.len() - 1]);
    let reply = send_raw(&addr, &bytes).await;
    let (welcome, used) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(matches!(welcome, HelloReply::Welcome { node_id: 1 }));
    assert!(reply.len() > used, "an error reply follows the welcome");
    let mut bytes = hello("metakv", PROTOCOL_VERSION);
    let mut frame = encode_frame(&metakv_raft::wire::Request::SnapshotDone);
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    bytes.extend_from_slice(&frame);
    let reply = send_raw(&addr, &bytes).await;
    let (_, used) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    let (answer, _) =
        metakv_raft::wire::decode_frame::<metakv_raft::wire::Reply>(&reply[used..]).unwrap();
    assert!(
        matches!(answer, metakv_raft::wire::Reply::Malformed(ref e) if e.contains("crc")),
        "{answer:?}"
    );

    tracing::info!("--- raft RPCs from a client are refused");
    let mut conn = Conn::dial(&addr, "metakv", None).await.unwrap();
    let err = conn
        .call(
            &metakv_raft::wire::Request::SnapshotDone,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only accepted from nodes"),
        "{err}"
    );

    tracing::info!("--- and the node still serves a well-behaved client");
    let client = Client::new(vec![addr.clone()], "metakv");
    client.put("b", b"k", b"v", Expect::Any).await.unwrap();
    assert_eq!(client.get("b", b"k").await.unwrap().unwrap().value, b"v");
    cluster.shutdown().await;
}

/// A pooled connection whose node restarted must be noticed before a request is sent on it:
/// re-sending after a failure could apply a write twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_to_a_stopped_node_is_stale_before_use() {
    let mut cluster = Cluster::start(1).await;
    let addr = cluster.node(1).addr().to_owned();
    let conn = Conn::dial(&addr, "metakv", None).await.unwrap();
    assert!(!conn.is_stale(), "a live idle connection is usable");
    cluster.stop(1).await;
    let mut stale = false;
    for _ in 0..100 {
        stale = conn.is_stale();
        if stale {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stale, "the closed connection was not noticed");
}
