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
        matches!(err, CallError::Refused { ref reason, .. }
            if reason.contains("cluster id") && !reason.contains("\"metakv\"")),
        "the refusal names the cluster id it expected: {err}"
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

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// What a dialer could make a node hold: 1,010 idle connections locked every client out (the
/// process ran out of file descriptors), ten 80 MiB frames from a "client" took 820 MB of
/// RSS, and a snapshot announced as 1 TB was spooled until the disk filled. Now connections
/// are bounded (a new one closes the one idle longest) and time out when idle, a client's
/// frame is bounded by the largest value, and a snapshot must fit the disk before a byte is
/// written; refusals are logged at a bounded rate (18.6k lines in 5 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_connections_and_frames_leaves_the_node_serving_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[limits]\nconnections_max = 64\nidle_timeout = \"2s\"\n",
    )
    .unwrap();
    let node = common::serve_args(
        dir.path(),
        1,
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().join("node1").display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
    );
    let addr = node.addr.clone();
    let client = Client::new(vec![addr.clone()], "metakv").with_timeout(Duration::from_secs(3));
    client.create_bucket("b").await.unwrap();
    let rss_before = rss_bytes(node.child.id());
    let hello = |from: Option<u64>| {
        encode_frame(&Hello {
            cluster_id: "metakv".into(),
            from,
            protocol: PROTOCOL_VERSION,
        })
    };

    tracing::info!("--- 300 connections that say nothing, 300 clients that say hello and wait");
    let mut held = Vec::new();
    for i in 0..600 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 1 {
            tcp.write_all(&hello(None)).await.unwrap();
        }
        held.push(tcp);
    }
    let started = std::time::Instant::now();
    client.put("b", b"k", b"v", Expect::Any).await.unwrap();
    assert_eq!(client.get("b", b"k").await.unwrap().unwrap().value, b"v");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a client waited {:?} behind idle connections",
        started.elapsed()
    );

    // A new connection may close one of the flood's once it has been idle a second (until
    // then, new ones are refused: closing a connection that just went idle could cut a
    // request in flight).
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    tracing::info!("--- ten 80 MiB frames from clients are refused at their header");
    for _ in 0..10 {
        let mut bytes = hello(None);
        let mut header = vec![0u8; 8];
        header[..4].copy_from_slice(&(80u32 << 20).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&vec![7u8; 4 << 20]);
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let _ = tcp.write_all(&bytes).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
        let (_, used) = metakv_raft::wire::decode_frame::<HelloReply>(&out).unwrap();
        let (answer, _) =
            metakv_raft::wire::decode_frame::<metakv_raft::wire::Reply>(&out[used..]).unwrap();
        assert!(
            matches!(answer, metakv_raft::wire::Reply::Malformed(ref e) if e.contains("over the limit")),
            "{answer:?}"
        );
    }

    tracing::info!("--- a snapshot announced as 1 TB is refused before anything is spooled");
    let mut conn = Conn::dial(&addr, "metakv", Some(77)).await.unwrap();
    let meta = openraft::storage::SnapshotMeta::default();
    let err = conn
        .call(
            &metakv_raft::wire::Request::SnapshotBegin {
                vote: metakv_raft::types::Vote::new(1, 77),
                meta,
                len: 1 << 40,
            },
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    let spooled: Vec<_> = std::fs::read_dir(dir.path().join("node1/snapshots"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        spooled
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("incoming")),
        "spooled: {spooled:?}"
    );

    tracing::info!("--- an idle client connection is closed after the idle timeout");
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(&hello(None)).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "an idle connection stayed open 10 s with a 2 s idle timeout"
    );

    tracing::info!("--- 1,000 garbage handshakes write a bounded number of log lines");
    let log = || std::fs::read_to_string(dir.path().join("node1.log")).unwrap_or_default();
    let lines_before = log()
        .lines()
        .filter(|l| l.contains("bad handshake"))
        .count();
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n\r\n\r\n").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seconds = started.elapsed().as_secs() + 1;
    let logged = log()
        .lines()
        .filter(|l| l.contains("bad handshake"))
        .count()
        - lines_before;
    assert!(logged > 0, "no refusal was logged at all");
    assert!(
        logged as u64
            <= (seconds + 1) * u64::from(metakv_raft::server::REFUSAL_LINES_PER_SECOND_MAX),
        "{logged} refusal lines in {seconds} s"
    );

    let rss_after = rss_bytes(node.child.id());
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew from {} MiB to {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    client.put("b", b"k2", b"v", Expect::Any).await.unwrap();
    drop(held);
}
