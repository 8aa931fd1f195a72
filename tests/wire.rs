//! Bad input over the wire: garbage, an oversized length, a wrong cluster id, a truncated
//! frame, raft RPCs from a client, plaintext to a TLS node. The node answers with an error or
//! closes that connection, and keeps serving everyone else. Everything after the first
//! test's plaintext probe runs over TLS with the admin's certificate, as a client would.

mod common;

use std::time::Duration;

use common::{Cluster, admin_tls, node_tls, tls_stream};
use metakv::{Client, Expect, Kv};
use metakv_raft::network::{CallError, Conn};
use metakv_raft::secure::TransportTls;
use metakv_raft::wire::{Hello, HelloReply, PROTOCOL_VERSION, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `bytes` on `stream` and returns what the node wrote back before closing.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> Vec<u8> {
    let _ = stream.write_all(bytes).await;
    // The end of what is sent (a TLS close_notify, then FIN): a truncated frame ends here.
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the node closes; a TLS close without close_notify ends it too.
    let read = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the node closes the connection");
    out
}

/// Sends `bytes` after a TLS handshake with `tls`; returns what the node wrote back.
async fn send_raw(addr: &str, tls: &TransportTls, bytes: &[u8]) -> Vec<u8> {
    exchange(tls_stream(addr, tls).await.unwrap(), bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_connections_are_refused_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1).await;
    let node = cluster.node(1);
    let addr = node.addr().to_owned();
    node.create_bucket("b").await.unwrap();
    let tls = admin_tls(cluster.dir.path());

    tracing::info!("--- plaintext to a TLS node is refused, with the reason");
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let plain = Hello {
        cluster_id: "metakv".into(),
        from: Some(1),
        protocol: PROTOCOL_VERSION,
        token: None,
    };
    let reply = exchange(tcp, &encode_frame(&plain)).await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("TLS connections only")),
        "{answer:?}"
    );
    let err = Client::insecure(vec![addr.clone()], "metakv")
        .get("b", b"k")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS connections only"), "{err}");
    let hello = |cluster_id: &str, protocol| {
        encode_frame(&Hello {
            cluster_id: cluster_id.into(),
            from: None,
            protocol,
            token: None,
        })
    };

    tracing::info!("--- garbage instead of a hello");
    let reply = send_raw(&addr, &tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("bad handshake")),
        "{answer:?}"
    );

    tracing::info!("--- an oversized length is refused before anything is read");
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[0; 4]);
    let reply = send_raw(&addr, &tls, &huge).await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("over the limit")),
        "{answer:?}"
    );

    tracing::info!("--- wrong cluster id, wrong protocol version");
    let err = Conn::dial(&addr, "other-cluster", None, Some(&tls))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Refused { ref reason, .. }
            if reason.contains("cluster id") && !reason.contains("\"metakv\"")),
        "the refusal names the cluster id it expected: {err}"
    );
    let reply = send_raw(&addr, &tls, &hello("metakv", PROTOCOL_VERSION + 1)).await;
    let (answer, _) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(
        matches!(answer, HelloReply::Refused { ref reason } if reason.contains("protocol version")),
        "{answer:?}"
    );
    // A client of another cluster id does not even trust the node's certificate.
    let client = Client::new(vec![addr.clone()], "other-cluster", &cluster.creds()).unwrap();
    let err = client.get("b", b"k").await.unwrap_err();
    assert!(err.to_string().contains("no node of cluster"), "{err}");

    tracing::info!("--- a truncated frame and a damaged frame after a good hello");
    let mut bytes = hello("metakv", PROTOCOL_VERSION);
    let frame = encode_frame(&metakv_raft::wire::Request::SnapshotDone);
    bytes.extend_from_slice(&frame[..frame.len() - 1]);
    let reply = send_raw(&addr, &tls, &bytes).await;
    let (welcome, used) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    assert!(matches!(welcome, HelloReply::Welcome { node_id: 1 }));
    assert!(reply.len() > used, "an error reply follows the welcome");
    let mut bytes = hello("metakv", PROTOCOL_VERSION);
    let mut frame = encode_frame(&metakv_raft::wire::Request::SnapshotDone);
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    bytes.extend_from_slice(&frame);
    let reply = send_raw(&addr, &tls, &bytes).await;
    let (_, used) = metakv_raft::wire::decode_frame::<HelloReply>(&reply).unwrap();
    let (answer, _) =
        metakv_raft::wire::decode_frame::<metakv_raft::wire::Reply>(&reply[used..]).unwrap();
    assert!(
        matches!(answer, metakv_raft::wire::Reply::Malformed(ref e) if e.contains("crc")),
        "{answer:?}"
    );

    tracing::info!("--- raft RPCs from a client are refused");
    let mut conn = Conn::dial(&addr, "metakv", None, Some(&tls)).await.unwrap();
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
    let client = cluster.client(vec![addr.clone()]);
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
    let tls = admin_tls(cluster.dir.path());
    let conn = Conn::dial(&addr, "metakv", None, Some(&tls)).await.unwrap();
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
    let client =
        common::client(dir.path(), vec![addr.clone()]).with_timeout(Duration::from_secs(3));
    let tls = admin_tls(dir.path());
    client.create_bucket("b").await.unwrap();
    let rss_before = rss_bytes(node.child.id());
    let hello = |from: Option<u64>| {
        encode_frame(&Hello {
            cluster_id: "metakv".into(),
            from,
            protocol: PROTOCOL_VERSION,
            token: None,
        })
    };

    tracing::info!("--- 300 connections that say nothing, 300 clients that say hello and wait");
    let mut held = Vec::new();
    let mut held_tls = Vec::new();
    for i in 0..600 {
        if i % 2 == 1 {
            // A connection the node may close meanwhile (to make room) fails here: fine.
            if let Ok(mut stream) = tls_stream(&addr, &tls).await {
                let _ = stream.write_all(&hello(None)).await;
                let _ = stream.flush().await;
                held_tls.push(stream);
            }
        } else {
            held.push(TcpStream::connect(&addr).await.unwrap());
        }
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
        let out = send_raw(&addr, &tls, &bytes).await;
        let (_, used) = metakv_raft::wire::decode_frame::<HelloReply>(&out).unwrap();
        let (answer, _) =
            metakv_raft::wire::decode_frame::<metakv_raft::wire::Reply>(&out[used..]).unwrap();
        assert!(
            matches!(answer, metakv_raft::wire::Reply::Malformed(ref e) if e.contains("over the limit")),
            "{answer:?}"
        );
    }

    tracing::info!("--- a snapshot announced as 1 TB is refused before anything is spooled");
    // It takes a member's certificate now: node 1's own, as a stolen one would be.
    let member = node_tls(dir.path(), 1);
    let mut conn = Conn::dial(&addr, "metakv", Some(1), Some(&member))
        .await
        .unwrap();
    let meta = openraft::storage::SnapshotMeta::default();
    let err = conn
        .call(
            &metakv_raft::wire::Request::SnapshotBegin {
                vote: metakv_raft::types::Vote::new(1, 1),
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
    let idle = tls_stream(&addr, &tls).await.unwrap();
    let started_idle = std::time::Instant::now();
    let out = exchange(idle, &hello(None)).await;
    assert!(!out.is_empty(), "no welcome");
    assert!(
        started_idle.elapsed() < Duration::from_secs(10),
        "an idle connection stayed open 10 s with a 2 s idle timeout"
    );

    tracing::info!("--- 1,000 garbage handshakes write a bounded number of log lines");
    // In a second of their own: the refusals above may have used this second's lines.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let log = || std::fs::read_to_string(dir.path().join("node1.log")).unwrap_or_default();
    let lines_before = log().lines().filter(|l| l.contains("refus")).count();
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n\r\n\r\n").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seconds = started.elapsed().as_secs() + 1;
    let logged = log().lines().filter(|l| l.contains("refus")).count() - lines_before;
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
    drop(held_tls);
}
