//! Trust: who may act as a node, and how a new node gets its certificate.
//!
//! Before TLS, a connection whose hello said `from: Some(77)` was a node: with that one claim
//! it wrote into `_sys`, had a forged vote for term 1000 granted and injected entries. Now a
//! peer is whoever its certificate (from the cluster CA) names, a node's requests count only
//! while it is a member, and a new node gets its certificate with a one-time join token that
//! also names the CA it must find (no trust on first use).

mod common;

use std::time::Duration;

use common::{Cluster, admin_tls, config, node_tls};
use metakv::{ClientReply, ClientRequest, Kv, Node, Op, Role};
use metakv_raft::network::{CallError, Conn};
use metakv_raft::types::Vote;
use metakv_raft::wire::{Reply, Request};
use openraft::raft::VoteRequest;

/// A forged vote for term 1000 from node `from`.
fn forged_vote(from: u64) -> Request {
    Request::Vote(VoteRequest::new(Vote::new(1000, from), None))
}

fn term_of(node: &Node) -> u64 {
    node.node_status().term
}

/// A write into `_sys` as a node would forward it.
fn sys_write() -> Request {
    let request = ClientRequest::Write(Op::Put {
        bucket: metakv::store::SYS_BUCKET.into(),
        key: b"member/owned".to_vec(),
        value: b"x".to_vec(),
        expect: metakv::Expect::Any,
    });
    Request::Service {
        service: metakv::api::CLIENT_SERVICE.into(),
        payload: postcard::to_stdvec(&request).unwrap(),
    }
}

fn refusal(reply: Result<Reply, CallError>) -> String {
    match reply {
        Err(e) => e.to_string(),
        Ok(Reply::Service(bytes)) => match postcard::from_bytes::<ClientReply>(&bytes).unwrap() {
            ClientReply::Error(e) => e.to_string(),
            other => panic!("answered {other:?}"),
        },
        Ok(other) => panic!("answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_current_member_s_certificate_acts_as_a_node() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let target = cluster.node(leader).addr().to_owned();
    let dir = cluster.dir.path().to_owned();
    let term = term_of(cluster.node(leader));
    let ttl = Duration::from_secs(5);

    tracing::info!("--- a user's certificate that says it is node 2");
    let admin = admin_tls(&dir);
    let err = Conn::dial(&target, "metakv", Some(2), Some(&admin))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("its certificate is of user"),
        "{err}"
    );

    tracing::info!("--- node 2's certificate that says it is node 3");
    let two = node_tls(&dir, 2);
    let err = Conn::dial(&target, "metakv", Some(3), Some(&two))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("its certificate is of node 2"),
        "{err}"
    );

    tracing::info!("--- a certificate of the cluster CA for node 77, no member");
    let stranger = node_tls(&dir, 77);
    let mut conn = Conn::dial(&target, "metakv", Some(77), Some(&stranger))
        .await
        .unwrap();
    let err = refusal(conn.call(&forged_vote(77), ttl).await);
    assert!(err.contains("node 77 is not a member"), "{err}");
    let mut conn = Conn::dial(&target, "metakv", Some(77), Some(&stranger))
        .await
        .unwrap();
    let err = refusal(conn.call(&sys_write(), ttl).await);
    assert!(err.contains("node 77 is not a member"), "{err}");
    tracing::info!("--- the same certificate as a client may do nothing but join as itself");
    let mut conn = Conn::dial(&target, "metakv", None, Some(&stranger))
        .await
        .unwrap();
    let err = refusal(conn.call(&sys_write(), ttl).await);
    assert!(err.contains("not authorised"), "{err}");

    tracing::info!("--- another CA's node: no TLS session either way");
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = metakv::tls::NodeTls::create(
        foreign_dir.path(),
        &metakv::tls::Subject::Node {
            cluster: "metakv".into(),
            id: 2,
        },
        Some("127.0.0.1"),
    )
    .unwrap()
    .transport("metakv")
    .unwrap();
    let err = Conn::dial(&target, "metakv", Some(2), Some(&foreign))
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");

    tracing::info!("--- a removed member's certificate, valid for years, is refused");
    let removed = if leader == 3 { 2 } else { 3 };
    cluster.node(leader).remove_node(removed).await.unwrap();
    cluster.stop(removed).await;
    let old = node_tls(&dir, removed);
    let mut conn = Conn::dial(&target, "metakv", Some(removed), Some(&old))
        .await
        .unwrap();
    let err = refusal(conn.call(&forged_vote(removed), ttl).await);
    assert!(
        err.contains(&format!("node {removed} was removed")),
        "{err}"
    );
    // Nor entries: a removed member cannot pose as a leader either.
    let mut conn = Conn::dial(&target, "metakv", Some(removed), Some(&old))
        .await
        .unwrap();
    let append = Request::AppendEntries(openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(1000, removed),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    });
    let err = refusal(conn.call(&append, ttl).await);
    assert!(
        err.contains(&format!("node {removed} was removed")),
        "{err}"
    );

    // No forged vote moved the term, and the cluster still takes writes.
    let leader_node = cluster.node(leader);
    assert!(
        term_of(leader_node) < 1000 && term_of(leader_node) <= term + 2,
        "term {} after forged votes (was {term})",
        term_of(leader_node)
    );
    assert_eq!(leader_node.node_status().role, Role::Leader);
    leader_node.create_bucket("after").await.unwrap();
    let records = leader_node
        .scan(
            metakv::store::SYS_BUCKET,
            b"member/owned",
            None,
            10,
            true,
            metakv::Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert!(records.items.is_empty(), "a forged write reached _sys");
    cluster.shutdown().await;
}

/// Starts node `id` joining `seed` with `token`; the error if it does not come up.
async fn join_with(
    cluster: &Cluster,
    id: u64,
    seed: &str,
    token: &str,
) -> Result<Node, metakv::Error> {
    let mut c = config(cluster.dir.path(), id, Some(seed.to_owned()));
    c.join_token = Some(token.to_owned());
    Node::start(c).await
}

fn voters(node: &Node) -> Vec<u64> {
    let mut v: Vec<u64> = node
        .node_status()
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_tokens_work_once_expire_can_be_revoked_and_name_their_ca() {
    let mut cluster = Cluster::start(1).await;
    let one = cluster.node(1).clone();
    let seed = one.addr().to_owned();

    let token = cluster.token().await;
    let two = join_with(&cluster, 2, &seed, &token).await.unwrap();
    assert_eq!(voters(&one), vec![1, 2]);

    let refused = |e: metakv::Error, says: &str| {
        assert!(e.to_string().contains(says), "{e}");
    };
    tracing::info!("--- used");
    refused(
        join_with(&cluster, 3, &seed, &token).await.unwrap_err(),
        "was used already (by node 2)",
    );
    tracing::info!("--- expired");
    let short = one.join_token(Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    refused(
        join_with(&cluster, 3, &seed, &short.token)
            .await
            .unwrap_err(),
        "has expired",
    );
    tracing::info!("--- revoked");
    let revoked = one.join_token(Duration::from_secs(600)).await.unwrap();
    one.revoke_join_token(&revoked.id).await.unwrap();
    refused(
        join_with(&cluster, 3, &seed, &revoked.token)
            .await
            .unwrap_err(),
        "unknown or revoked",
    );
    tracing::info!("--- tampered");
    let good = one.join_token(Duration::from_secs(600)).await.unwrap();
    let mut bad = good.token.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    refused(
        join_with(&cluster, 3, &seed, std::str::from_utf8(&bad).unwrap())
            .await
            .unwrap_err(),
        "does not match its secret",
    );
    tracing::info!("--- a member's id, from another data dir");
    let mut c = config(cluster.dir.path(), 2, Some(seed.clone()));
    c.data_dir = cluster.dir.path().join("another-node2");
    c.join_token = Some(good.token.clone());
    refused(Node::start(c).await.unwrap_err(), "is a member already");
    tracing::info!("--- a token that names another CA: the member's certificate is refused");
    let other = Cluster::start(1).await;
    let foreign = other.token().await;
    let e = join_with(&cluster, 3, &seed, &foreign).await.unwrap_err();
    assert!(matches!(e, metakv::Error::Unavailable(_)), "{e}");
    refused(e, "not the one the join token names");
    other.shutdown().await;
    assert_eq!(
        voters(&one),
        vec![1, 2],
        "a refused join changed the cluster"
    );
    assert!(
        !cluster.dir.path().join("node3").join("tls").exists(),
        "a refused node kept TLS material"
    );

    tracing::info!("--- the first node down: a token and a join through the others");
    cluster.nodes.push(Some(two));
    let token = cluster.token().await;
    let three = join_with(&cluster, 3, cluster.node(2).addr(), &token)
        .await
        .unwrap();
    cluster.nodes.push(Some(three));
    cluster.stop(1).await;
    let leader = cluster.leader().await;
    let token = cluster
        .node(leader)
        .join_token(Duration::from_secs(60))
        .await
        .unwrap();
    let four = join_with(&cluster, 4, cluster.node(2).addr(), &token.token)
        .await
        .unwrap();
    assert_eq!(voters(&four), vec![1, 2, 3, 4]);
    four.shutdown().await;
    cluster.shutdown().await;
}
