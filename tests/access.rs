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

async fn add_role(admin: &Client, name: &str, grants: Grants) {
    admin
        .access(AccessRequest::RoleAdd {
            name: name.into(),
            grants,
        })
        .await
        .unwrap();
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
        add_role(&admin, name, grants).await;
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
        // Nor any other administration: GC, compaction, checks, backups, pauses and
        // resumes, membership, join tokens.
        denied(ada.gc_run(false, Some(0)).await.unwrap_err());
        denied(ada.gc_status(1).await.unwrap_err());
        denied(ada.compact_node().await.unwrap_err());
        denied(ada.check_node().await.unwrap_err());
        denied(
            ada.request(metakv::ClientRequest::BackupBegin)
                .await
                .unwrap_err(),
        );
        let archive = cluster.dir.path().join("archive").display().to_string();
        denied(ada.start_pause("users", &archive).await.unwrap_err());
        denied(ada.start_resume("users", None).await.unwrap_err());
        denied(ada.add_node(9, "127.0.0.1:1").await.unwrap_err());
        denied(
            ada.join_token(std::time::Duration::from_secs(60))
                .await
                .unwrap_err(),
        );
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
        // `*` is every bucket of the user's, not metakv's own records.
        denied(
            as_user(&bob2, addr)
                .get(metakv::store::SYS_BUCKET, b"user/bob")
                .await
                .unwrap_err(),
        );
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

/// Sends `request` on `conn` as the client service, and returns its reply.
async fn call(
    conn: &mut metakv_raft::network::Conn,
    request: &metakv::ClientRequest,
) -> metakv::ClientReply {
    let request = metakv_raft::wire::Request::Service {
        service: metakv::api::CLIENT_SERVICE.into(),
        payload: postcard::to_stdvec(request).unwrap(),
    };
    match conn
        .call(&request, std::time::Duration::from_secs(10))
        .await
        .unwrap()
    {
        metakv_raft::wire::Reply::Service(bytes) => postcard::from_bytes(&bytes).unwrap(),
        other => panic!("answered {other:?}"),
    }
}

fn refused(reply: metakv::ClientReply) -> Error {
    match reply {
        metakv::ClientReply::Error(e) => e,
        other => panic!("answered {other:?}"),
    }
}

/// A request a follower passes on to the leader carries the user it is for, and the leader
/// authorises it again against its own `_sys`, taking such a request only from a member. The
/// embedded API answers for a user the same way. A user's backups are its own, and one user
/// holds at most two of a node's four slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_for_a_user_are_authorised_where_they_are_answered() {
    use metakv::{ClientReply, ClientRequest, Op};
    use metakv_raft::network::Conn;

    let cluster = Cluster::start(3).await;
    let addrs: Vec<String> = cluster.running().map(|n| n.addr().to_owned()).collect();
    let admin = cluster.client(addrs.clone());
    admin.create_bucket("users").await.unwrap();
    admin.put("users", b"ada", b"1", Expect::Any).await.unwrap();
    for (name, grants) in [
        (
            "reader",
            Grants {
                read: vec!["users".into()],
                ..Grants::default()
            },
        ),
        (
            "ops",
            Grants {
                admin: true,
                ..Grants::default()
            },
        ),
    ] {
        add_role(&admin, name, grants).await;
    }
    let mut tokens = Vec::new();
    for (user, role) in [("ada", "reader"), ("olga", "ops"), ("oscar", "ops")] {
        let t = token(
            &admin,
            AccessRequest::UserAdd {
                name: user.into(),
                roles: vec![role.into()],
            },
        )
        .await;
        tokens.push(t);
    }
    let (ada, olga, oscar) = (&tokens[0], &tokens[1], &tokens[2]);
    settle(&cluster).await;
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let target = cluster.node(leader).addr().to_owned();
    let put = |key: &[u8]| {
        Box::new(ClientRequest::Write(Op::Put {
            bucket: "users".into(),
            key: key.to_vec(),
            value: b"v".to_vec(),
            expect: Expect::Any,
        }))
    };
    let get = Box::new(ClientRequest::Get {
        bucket: "users".into(),
        key: b"ada".to_vec(),
        include_tombstones: false,
        consistency: metakv::api::Consistency::Linearizable,
    });
    let on_behalf =
        |user: &str, token: Option<&String>, request: Box<ClientRequest>| ClientRequest::OnBehalf {
            user: user.into(),
            token: token.cloned(),
            request,
        };

    tracing::info!("--- a member's request for ada: the leader holds it to ada's roles");
    let tls = common::node_tls(cluster.dir.path(), follower);
    let mut conn = Conn::dial(&target, "metakv", Some(follower), Some(&tls))
        .await
        .unwrap();
    let e = denied(refused(
        call(&mut conn, &on_behalf("ada", None, put(b"x"))).await,
    ));
    assert!(
        e.contains("\"ada\"") && e.contains("write bucket \"users\""),
        "{e}"
    );
    match call(&mut conn, &on_behalf("ada", Some(ada), get.clone())).await {
        ClientReply::Record(Some(r)) => assert_eq!(r.value, b"1"),
        other => panic!("answered {other:?}"),
    }
    let mut damaged = ada.clone();
    damaged.pop();
    damaged.push('g');
    let e = denied(refused(
        call(&mut conn, &on_behalf("ada", Some(&damaged), get.clone())).await,
    ));
    assert!(e.contains("unknown, revoked or damaged"), "{e}");
    let e = denied(refused(
        call(&mut conn, &on_behalf("nobody", None, get.clone())).await,
    ));
    assert!(e.contains("\"nobody\""), "{e}");
    // A name no user can have is refused before anything is looked up or cached for it.
    let long = "n".repeat(10_000);
    let e = refused(call(&mut conn, &on_behalf(&long, None, get.clone())).await);
    assert_eq!(
        e.rejection_kind(),
        Some(metakv::RejectionKind::Invalid),
        "{e}"
    );
    assert!(e.to_string().contains("1 to 64"), "{e}");
    let sys = Box::new(ClientRequest::Write(Op::Put {
        bucket: metakv::store::SYS_BUCKET.into(),
        key: b"role/mine".to_vec(),
        value: b"x".to_vec(),
        expect: Expect::Any,
    }));
    let e = refused(call(&mut conn, &on_behalf("admin", None, sys)).await);
    assert!(e.to_string().contains("reserved"), "{e}");
    let nested = on_behalf("admin", None, Box::new(on_behalf("admin", None, put(b"x"))));
    let e = refused(call(&mut conn, &nested).await);
    assert!(e.to_string().contains("carries one request"), "{e}");

    tracing::info!("--- the admin's certificate, no member: it may not speak for another user");
    let admin_tls = common::admin_tls(cluster.dir.path());
    let mut conn = Conn::dial(&target, "metakv", None, Some(&admin_tls))
        .await
        .unwrap();
    let e = denied(refused(
        call(&mut conn, &on_behalf("admin", None, put(b"x"))).await,
    ));
    assert!(e.contains("only a member node"), "{e}");
    assert!(admin.get("users", b"x").await.unwrap().is_none());

    tracing::info!("--- the embedded API, on a follower, for a user");
    let node = cluster.node(follower);
    let as_ada = node.on_behalf_of("ada");
    assert_eq!(
        as_ada.get("users", b"ada").await.unwrap().unwrap().value,
        b"1"
    );
    denied(
        as_ada
            .put("users", b"x", b"v", Expect::Any)
            .await
            .unwrap_err(),
    );
    denied(
        node.on_behalf_of("nobody")
            .get("users", b"ada")
            .await
            .unwrap_err(),
    );
    node.on_behalf_of("admin")
        .put("users", b"by-admin", b"v", Expect::Any)
        .await
        .unwrap();
    let e = node
        .on_behalf_of("admin")
        .request(on_behalf("admin", None, put(b"x")))
        .await
        .unwrap_err();
    denied(e);

    tracing::info!("--- backups: two slots per user, and a user's backup is its own");
    let as_user = |token: &str| {
        Client::new(
            vec![addrs[follower as usize - 1].clone()],
            "metakv",
            &cluster.creds().with_token(token.to_owned()),
        )
        .unwrap()
    };
    let (olga, oscar) = (as_user(olga), as_user(oscar));
    async fn begin(kv: &Client) -> Result<metakv::api::BackupInfo, Error> {
        match kv.request(ClientRequest::BackupBegin).await {
            Ok(ClientReply::Backup(info)) => Ok(info),
            Ok(other) => panic!("answered {other:?}"),
            Err(e) => Err(e),
        }
    }
    let first = begin(&olga).await.unwrap();
    begin(&olga).await.unwrap();
    let e = begin(&olga).await.unwrap_err();
    assert!(
        matches!(e, Error::Busy(_)) && e.to_string().contains("\"olga\""),
        "{e}"
    );
    let chunk = ClientRequest::BackupChunk {
        node: first.node,
        id: first.id,
        offset: 0,
    };
    let e = oscar.request(chunk.clone()).await.unwrap_err();
    assert!(e.to_string().contains("holds no backup"), "{e}");
    let end = ClientRequest::BackupEnd {
        node: first.node,
        id: first.id,
    };
    assert!(oscar.request(end.clone()).await.is_err());
    begin(&oscar).await.unwrap();
    match olga.request(chunk).await.unwrap() {
        ClientReply::Bytes(b) => assert!(!b.is_empty()),
        other => panic!("answered {other:?}"),
    }
    olga.request(end).await.unwrap();
    begin(&olga).await.unwrap();
    cluster.shutdown().await;
}
