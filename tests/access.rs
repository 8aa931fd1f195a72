//! Users, roles and per-bucket permissions: any client that reached a node could create and
//! drop buckets, delete everything, take a backup and change the membership. Now a user's
//! token or certificate names it, its roles grant reads and writes on named buckets (or `*`)
//! or administration, and every request is authorised on the node that receives it.

mod common;

use common::Cluster;
use metakv::{AccessReply, AccessRequest, Client, Error, Expect, Grants, Kv};

fn denied(e: Error) -> String {
    assert!(matches!(e, Error::Denied { .. }), "not a denial: {e}");
    e.to_string()
}

async fn token(admin: &Client, request: AccessRequest) -> String {
    match admin.access(request).await.unwrap() {
        AccessReply::Token { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

/// Waits until every node has applied what the leader has.
async fn settle(cluster: &Cluster) {
    let leader = cluster.leader().await;
    let applied = cluster.node(leader).node_status().applied;
    cluster.applied(applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_grant_reads_writes_and_administration_per_bucket_on_every_node() {
    let mut cluster = Cluster::start(3).await;
    let addrs: Vec<String> = cluster.running().map(|n| n.addr().to_owned()).collect();
    let admin = cluster.client(addrs.clone());
    admin.create_bucket("users").await.unwrap();
    admin.create_bucket("config").await.unwrap();
    admin.put("users", b"ada", b"1", Expect::Any).await.unwrap();
    let role = |read: &[&str], write: &[&str]| Grants {
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        admin: false,
    };
    for (name, grants) in [
        ("reader", role(&["users"], &[])),
        ("writer", role(&["users"], &["users"])),
        ("everything", role(&["*"], &["*"])),
    ] {
        admin
            .access(AccessRequest::RoleAdd {
                name: name.into(),
                grants,
            })
            .await
            .unwrap();
    }
    let ada = token(
        &admin,
        AccessRequest::UserAdd {
            name: "ada".into(),
            roles: vec!["reader".into()],
        },
    )
    .await;
    let bob = token(
        &admin,
        AccessRequest::UserAdd {
            name: "bob".into(),
            roles: vec!["writer".into()],
        },
    )
    .await;
    settle(&cluster).await;
    let as_user = |token: &str, addr: &str| {
        Client::new(
            vec![addr.to_owned()],
            "metakv",
            &cluster.creds().with_token(token.to_owned()),
        )
        .unwrap()
    };

    tracing::info!("--- a reader reads its bucket, through every node, and nothing else");
    for addr in &addrs {
        let ada = as_user(&ada, addr);
        assert_eq!(ada.get("users", b"ada").await.unwrap().unwrap().value, b"1");
        let e = denied(ada.put("users", b"x", b"v", Expect::Any).await.unwrap_err());
        assert!(e.contains("\"ada\"") && e.contains("users"), "{e}");
        denied(ada.get("config", b"k").await.unwrap_err());
        denied(ada.create_bucket("mine").await.unwrap_err());
        denied(ada.drop_bucket("users").await.unwrap_err());
        denied(ada.remove_node(2).await.unwrap_err());
        denied(ada.access(AccessRequest::UserList).await.unwrap_err());
    }
    tracing::info!("--- a writer writes its bucket only");
    let bob_c = as_user(&bob, &addrs[1]);
    bob_c.put("users", b"bob", b"2", Expect::Any).await.unwrap();
    denied(
        bob_c
            .put("config", b"k", b"v", Expect::Any)
            .await
            .unwrap_err(),
    );

    tracing::info!(
        "--- a revoked role, a replaced token and a removed user: refused on every node"
    );
    admin
        .access(AccessRequest::UserRevoke {
            name: "bob".into(),
            role: "writer".into(),
        })
        .await
        .unwrap();
    settle(&cluster).await;
    for addr in &addrs {
        denied(
            as_user(&bob, addr)
                .put("users", b"bob", b"3", Expect::Any)
                .await
                .unwrap_err(),
        );
    }
    admin
        .access(AccessRequest::UserGrant {
            name: "bob".into(),
            role: "everything".into(),
        })
        .await
        .unwrap();
    let bob2 = token(
        &admin,
        AccessRequest::UserToken {
            name: "bob".into(),
            revoke_all: true,
        },
    )
    .await;
    settle(&cluster).await;
    for addr in &addrs {
        as_user(&bob2, addr)
            .put("config", b"k", b"v", Expect::Any)
            .await
            .unwrap();
        let e = denied(as_user(&bob, addr).get("users", b"bob").await.unwrap_err());
        assert!(e.contains("unknown, revoked"), "{e}");
    }
    // A watch of ada's: it ends with the denial once ada is removed.
    let ada_watcher = as_user(&ada, &addrs[2]);
    let mut watch = ada_watcher.watch("users", b"", 0);
    admin.put("users", b"w", b"1", Expect::Any).await.unwrap();
    assert!(watch.next().await.is_ok());
    admin
        .access(AccessRequest::UserRemove { name: "ada".into() })
        .await
        .unwrap();
    settle(&cluster).await;
    for addr in &addrs {
        denied(as_user(&ada, addr).get("users", b"ada").await.unwrap_err());
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            admin.put("users", b"w", b"2", Expect::Any).await.unwrap();
            if let Err(e) = watch.next().await {
                return e;
            }
        }
    })
    .await
    .expect("the watch of a removed user ended");
    denied(ended);
    tracing::info!("--- a damaged token and a role that does not exist");
    let mut bad = bob2.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    denied(
        as_user(std::str::from_utf8(&bad).unwrap(), &addrs[0])
            .get("users", b"bob")
            .await
            .unwrap_err(),
    );
    let e = admin
        .access(AccessRequest::UserGrant {
            name: "bob".into(),
            role: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no role"), "{e}");
    let e = admin
        .access(AccessRequest::RoleRemove {
            name: "admin".into(),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("built in"), "{e}");

    tracing::info!("--- no token's text is in any node's files");
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    let mut files = Vec::new();
    walk(cluster.dir.path(), &mut files);
    assert!(files.len() > 10, "{files:?}");
    for token in [&ada, &bob, &bob2] {
        let secret = token.rsplit('.').next().unwrap().as_bytes();
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{} holds a token's secret",
                file.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Buckets are bounded (`limits.buckets_max`, default 10,000): 100,000 buckets made every
/// bucket create 15x slower. A create beyond the bound is refused before it is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_creates_beyond_the_bound_are_refused() {
    let cluster = Cluster::start_with(2, |c| c.buckets_max = 3).await;
    let leader = cluster.leader().await;
    let via = cluster.node(if leader == 1 { 2 } else { 1 });
    for b in ["a", "b", "c"] {
        via.create_bucket(b).await.unwrap();
    }
    let e = via.create_bucket("d").await.unwrap_err();
    assert!(e.to_string().contains("limits.buckets_max"), "{e}");
    assert_eq!(
        via.buckets().await.unwrap().len(),
        3 + 1,
        "_sys and a, b, c"
    );
    via.drop_bucket("a").await.unwrap();
    via.create_bucket("d").await.unwrap();
    cluster.shutdown().await;
}
