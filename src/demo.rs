//! `metakv demo`: the store's whole life cycle in a temporary directory, with a short report.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metakv_store::{
    Applied, ArchiveReader, Changes, Config, Expect, Frame, Op, Scope, Stamp, Store, TombstoneQuery,
};

/// Runs the demo; every step checks what it shows, so a wrong result fails the command.
pub fn run(users: u32) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("metakv-demo-").tempdir()?;
    crate::remove_on_early_exit(dir.path());
    outln!("metakv demo in {}", dir.path().display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cluster_tour(dir.path(), users))?;
    drop(runtime);
    store_tour(dir.path(), users)?;
    outln!(
        "done in {:.1?}; removing {}",
        started.elapsed(),
        dir.path().display()
    );
    Ok(())
}

/// A 3-node cluster on 127.0.0.1: writes through a follower, the same data on every node, a
/// GC job, the leader stopped and a new one serving every record.
async fn cluster_tour(dir: &std::path::Path, users: u32) -> Result<(), Box<dyn std::error::Error>> {
    use metakv::{Consistency, Kv, Node, NodeConfig, Role};
    let config = |id: u64, join: Option<String>| {
        let mut c = NodeConfig::new(id, dir.join(format!("node{id}")), "127.0.0.1:0");
        c.join = join;
        c.hibernation.archive_roots = vec![dir.display().to_string()];
        (
            c.heartbeat_ms,
            c.election_timeout_min_ms,
            c.election_timeout_max_ms,
        ) = (50, 250, 500);
        c
    };
    let first = Node::start(config(1, None)).await?;
    let seed = first.addr().to_owned();
    let mut nodes = vec![first];
    for id in 2..=3 {
        // Each new node shows a one-time join token to get its certificate.
        let token = nodes[0].join_token(Duration::from_secs(60)).await?.token;
        let mut c = config(id, Some(seed.clone()));
        c.join_token = Some(token);
        nodes.push(Node::start(c).await?);
    }
    let leader = nodes
        .iter()
        .find(|n| n.node_status().role == Role::Leader)
        .ok_or("no leader")?
        .id();
    outln!(
        "cluster: 3 nodes on 127.0.0.1, TLS 1.3 with a cluster CA made by node 1, nodes 2 and 3 \
         joined with one-time tokens (node {leader} leads)"
    );
    let via = nodes
        .iter()
        .find(|n| n.id() != leader)
        .ok_or("no follower")?;
    via.create_bucket("users").await?;
    for i in 0..users {
        let value = format!(r#"{{"name":"user {i}","role":"{}"}}"#, role(i));
        via.put(
            "users",
            format!("user/{i:06}").as_bytes(),
            value.as_bytes(),
            Expect::Absent,
        )
        .await?;
    }
    for i in (0..users).filter(|i| i % 10 != 0) {
        via.delete("users", format!("user/{i:06}").as_bytes(), Expect::Any)
            .await?;
    }
    let live = users.div_ceil(10) as u64;
    let dead = users as u64 - live;
    outln!(
        "  wrote {users} users and deleted {dead} through node {} (a follower forwards to the leader)",
        via.id()
    );
    for n in &nodes {
        let info = n.bucket("users").await?;
        if (info.records, info.tombstones) != (live, dead) {
            return Err(format!(
                "node {} has {} records and {} tombstones",
                n.id(),
                info.records,
                info.tombstones
            )
            .into());
        }
    }
    outln!("  every node holds {live} live records and {dead} tombstones");
    access_tour(dir, &nodes, via.addr()).await?;

    // Tombstone GC: collect on every node, purge the agreed ones through the log, compact.
    let job = via.gc_run(false, Some(0)).await?;
    let record = via
        .gc_wait(job, std::time::Duration::from_millis(100))
        .await?;
    if record.outcome != metakv::GcOutcome::Succeeded || record.purged != dead {
        return Err(format!("GC job {job}: {record:?}").into());
    }
    for n in &nodes {
        let info = n.bucket("users").await?;
        if (info.records, info.tombstones) != (live, 0) {
            return Err(format!("node {} after GC: {info:?}", n.id()).into());
        }
    }
    let total = |f: fn(&metakv::gc_engine::NodeCompaction) -> u64| {
        record.compactions.iter().map(f).sum::<u64>()
    };
    outln!(
        "  GC job {job}: {} tombstones agreed by all 3 nodes, {} purged through the log; \
         state files {} KiB -> {} KiB in all, followers first, node {leader} compacted after \
         handing leadership over ({} ms)",
        record.agreed,
        record.purged,
        total(|c| c.bytes_before) / 1024,
        total(|c| c.bytes_after) / 1024,
        record
            .finished_ms
            .unwrap_or(record.started_ms)
            .saturating_sub(record.started_ms)
    );
    // Hibernation: the bucket goes to an archive and comes back with every revision.
    let archive = dir.join("archive");
    let before = via
        .get("users", b"user/000000")
        .await?
        .ok_or("user/000000 missing")?;
    let paused = via
        .pause_bucket("users", &archive.display().to_string())
        .await?;
    let record = paused.record.ok_or("no hibernation record")?;
    let manifest = record.manifest.ok_or("no manifest")?;
    let refused = via.get("users", b"user/000000").await.is_err();
    outln!(
        "  paused bucket users (op {}): {} records in {} ({}) archived to {}/{}, read \
         back and verified, then dropped on every node; reads now answer \"bucket paused\": {refused}",
        record.op,
        manifest.records,
        crate::output::count(manifest.chunks.len() as u64, "chunk"),
        bytes(manifest.bytes),
        archive.display(),
        record.objects
    );
    via.resume_bucket("users", None).await?;
    for n in &nodes {
        let info = n.bucket("users").await?;
        if (info.records, info.tombstones) != (live, 0) {
            return Err(format!("node {} after resume: {info:?}", n.id()).into());
        }
    }
    if via.get("users", b"user/000000").await?.as_ref() != Some(&before) {
        return Err("user/000000 changed through pause and resume".into());
    }
    outln!("  resumed it: every node holds its {live} records again, revisions unchanged");

    let leader = loop {
        if let Some(n) = nodes.iter().find(|n| n.node_status().role == Role::Leader) {
            break n.id();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    let old = nodes
        .iter()
        .position(|n| n.id() == leader)
        .ok_or("leader gone")?;
    nodes.remove(old).shutdown().await;
    let mut new_leader = None;
    for _ in 0..100 {
        new_leader = nodes
            .iter()
            .find(|n| n.node_status().role == Role::Leader)
            .map(|n| n.id());
        if new_leader.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let new_leader = new_leader.ok_or("no new leader")?;
    let mut served = 0;
    let mut after = None;
    loop {
        let page = nodes[0]
            .scan("users", b"", after, 1000, false, Consistency::Linearizable)
            .await?;
        served += page.items.len() as u64;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if served != live {
        return Err(format!("the new leader serves {served} of {live} records").into());
    }
    outln!("  stopped node {leader}: node {new_leader} leads now and serves all {served} records");
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}

/// The store underneath, on one node: tombstone GC, compaction, pause and resume, check.
fn store_tour(dir: &std::path::Path, users: u32) -> Result<(), Box<dyn std::error::Error>> {
    let dir = &tempfile::Builder::new().prefix("store-").tempdir_in(dir)?;
    let store = Store::open(Config::new(dir.path().join("state.redb")))?;
    let mut clock = Clock::default();
    outln!("store: one node's file, {}", dir.path().display());

    store.apply(
        &Op::CreateBucket {
            bucket: "users".into(),
        },
        clock.tick(),
    )?;
    let ops: Vec<Op> = (0..users)
        .map(|i| Op::Put {
            bucket: "users".into(),
            key: format!("user/{i:06}").into_bytes(),
            value: format!(r#"{{"name":"user {i}","role":"{}"}}"#, role(i)).into_bytes(),
            expect: Expect::Absent,
        })
        .collect();
    apply_all(&store, &ops, &mut clock)?;
    let info = store.bucket("users")?;
    outln!(
        "  wrote {} users in one batch (revisions 2..={})",
        info.records,
        clock.rev
    );

    let cas = Op::Put {
        bucket: "users".into(),
        key: b"user/000000".to_vec(),
        value: b"{}".to_vec(),
        expect: Expect::Rev(1),
    };
    match store.apply(&cas, clock.tick())? {
        Applied::Conflict { current } => {
            let current = current.map_or("none".to_owned(), |r| r.to_string());
            outln!("  compare-and-set at a stale revision refused: current rev {current}")
        }
        other => return Err(format!("a stale compare-and-set was applied: {other:?}").into()),
    }

    let doomed: Vec<Op> = (0..users)
        .filter(|i| i % 10 != 0)
        .map(|i| Op::Delete {
            bucket: "users".into(),
            key: format!("user/{i:06}").into_bytes(),
            expect: Expect::Any,
        })
        .collect();
    apply_all(&store, &doomed, &mut clock)?;
    let info = store.bucket("users")?;
    outln!(
        "  deleted {}: {} live records, {} tombstones",
        doomed.len(),
        info.records,
        info.tombstones
    );
    let view = store.read()?;
    if let Changes::Events { events, .. } = view.changes("users", b"", clock.rev - 3, 10)? {
        for e in events {
            let kind = if e.record.deleted { "delete" } else { "put" };
            outln!(
                "    change at rev {}: {kind} {}",
                e.record.rev,
                String::from_utf8_lossy(&e.key)
            );
        }
    }
    drop(view);

    let size_before = store.sizes()?;
    let (purged, skipped) = collect_and_purge(&store, &mut clock)?;
    let info = store.bucket("users")?;
    outln!(
        "  tombstone GC: collected and purged {purged} (guard kept {skipped}); {} tombstones left, purge floor {}",
        info.tombstones,
        info.purge_floor
    );
    if info.tombstones != 0 {
        return Err("tombstones survived the purge".into());
    }
    let mut store = store;
    let report = store.compact()?;
    outln!(
        "  compaction: file {} -> {} ({} in use before)",
        bytes(report.bytes_before),
        bytes(report.bytes_after),
        bytes(size_before.in_use_bytes)
    );

    // The archive a pause writes (the cluster tour paused and resumed through the node): the
    // bucket exported, synced, and read back whole, every chunk's crc checked.
    let archive_path = dir.path().join("users.archive");
    let file = std::io::BufWriter::new(std::fs::File::create(&archive_path)?);
    let (summary, file) = store
        .read()?
        .export(Scope::Bucket("users".into()), file, |_| {})?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut reader =
        ArchiveReader::open(std::io::BufReader::new(std::fs::File::open(&archive_path)?))?;
    let mut read_back = 0;
    while let Some(frame) = reader.next()? {
        if let Frame::Records { records, .. } = frame {
            read_back += records.len() as u64;
        }
    }
    if read_back != summary.records {
        return Err(format!(
            "the archive holds {read_back} records, the export wrote {}",
            summary.records
        )
        .into());
    }
    outln!(
        "  archive: exported {} records in {} ({}), read back and verified",
        summary.records,
        crate::output::count(summary.chunks.len() as u64, "chunk"),
        bytes(summary.bytes)
    );

    let check = store.check()?;
    outln!(
        "  check: {} records, {} problems, file {:?}",
        check.records_checked,
        check.problems.len(),
        check.file
    );
    if !check.is_ok() {
        return Err(format!("check found problems: {:?}", check.problems).into());
    }
    Ok(())
}

fn role(i: u32) -> &'static str {
    ["admin", "editor", "viewer"][(i % 3) as usize]
}

/// Revisions and times for the ops the demo applies (what the Raft log gives a cluster).
#[derive(Debug, Default)]
struct Clock {
    rev: u64,
}

impl Clock {
    fn tick(&mut self) -> Stamp {
        self.rev += 1;
        Stamp {
            rev: self.rev,
            time_ms: self.rev,
        }
    }
}

fn apply_all(store: &Store, ops: &[Op], clock: &mut Clock) -> metakv_store::Result<()> {
    store.write(|w| {
        for op in ops {
            w.apply(op, clock.tick())?;
        }
        Ok(())
    })
}

fn collect_and_purge(store: &Store, clock: &mut Clock) -> metakv_store::Result<(u64, u64)> {
    let mut query = TombstoneQuery {
        after: None,
        limit: 1000,
        max_rev: clock.rev,
        deleted_at_or_before_ms: clock.rev,
        pins: BTreeMap::new(),
    };
    let (mut purged, mut skipped) = (0, 0);
    loop {
        let page = store.read()?.tombstones(&query)?;
        if !page.items.is_empty()
            && let Applied::Purged {
                purged: p,
                skipped: s,
            } = store.apply(&Op::Purge { items: page.items }, clock.tick())?
        {
            purged += p;
            skipped += s;
        }
        match page.next {
            Some(after) => query.after = Some(after),
            None => return Ok((purged, skipped)),
        }
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A reader and a writer of `users`, as remote clients with their tokens: the reader reads,
/// and its write is denied.
async fn access_tour(
    dir: &std::path::Path,
    nodes: &[metakv::Node],
    via: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use metakv::{AccessReply, AccessRequest, Client, ClientCreds, Grants, Kv};
    let admin = &nodes[0];
    let grants = |write: bool| Grants {
        read: vec!["users".into()],
        write: if write { vec!["users".into()] } else { vec![] },
        admin: false,
    };
    for (role, write) in [("reader", false), ("writer", true)] {
        admin
            .access(AccessRequest::RoleAdd {
                name: role.into(),
                grants: grants(write),
            })
            .await?;
    }
    let mut tokens = Vec::new();
    for (user, role) in [("rita", "reader"), ("walt", "writer")] {
        let request = AccessRequest::UserAdd {
            name: user.into(),
            roles: vec![role.into()],
        };
        match admin.access(request).await? {
            AccessReply::Token { token, .. } => tokens.push(token),
            other => return Err(format!("user add answered {other:?}").into()),
        }
    }
    let creds = ClientCreds::load(&dir.join("node1").join(metakv::tls::ADMIN_CREDS))?;
    let as_user = |token: &str| {
        Client::new(
            vec![via.to_owned()],
            "metakv",
            &creds.clone().with_token(token.to_owned()),
        )
    };
    let (rita, walt) = (as_user(&tokens[0])?, as_user(&tokens[1])?);
    walt.put(
        "users",
        b"user/000000",
        br#"{"name":"user 0","role":"admin"}"#,
        Expect::Any,
    )
    .await?;
    let read = rita.get("users", b"user/000000").await?.is_some();
    let denied = match rita.put("users", b"user/000000", b"x", Expect::Any).await {
        Err(e @ metakv::Error::Denied { .. }) => e.to_string(),
        other => return Err(format!("a reader's write answered {other:?}").into()),
    };
    outln!(
        "  users and roles: walt (role writer) wrote user/000000, rita (role reader) read it: \
         {read}; rita's write was refused: {denied}"
    );
    Ok(())
}
