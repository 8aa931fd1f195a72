//! `metakv bench`: closed-loop durable writes against a cluster, in the shape of
//! `../shared/bench/etcd-baseline.sh` (16-byte keys, 256-byte values by default, each client on
//! its own connection to the leader, one put per request).

use std::time::{Duration, Instant};

use metakv::{Expect, Kv, Node, NodeConfig, Role};

/// Says on stderr what the connections are.
fn progress_note_security(insecure: bool) {
    if insecure {
        eprintln!("metakv bench: plain TCP (--insecure)");
    } else {
        eprintln!("metakv bench: TLS 1.3, client certificates");
    }
}

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection to the leader.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub clients: u64,
    /// Puts in all, shared between the clients.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub ops: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub value_bytes: u64,
    /// Bytes of each key (at least 16, which hold the client and the put's number).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(16..=1024))]
    pub key_bytes: u64,
    /// The bucket to write into: bench makes it, and drops it afterwards unless --keep. One
    /// that exists already is refused (exit code 8), so no data of yours is written over.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Keep the bucket (and what was written) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Write as a user that holds only `write` on the bench bucket (made for the run, with a
    /// token), not as the admin: what authorising each request costs.
    #[arg(long)]
    pub as_user: bool,
}

/// Runs against `endpoints`, or against a 3-node cluster on 127.0.0.1 in a temp dir when
/// `None`.
pub fn run(
    args: BenchArgs,
    endpoints: Option<Vec<String>>,
    cluster_id: String,
    insecure: bool,
    creds: Option<std::path::PathBuf>,
) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dir = tempfile::Builder::new().prefix("metakv-bench-").tempdir()?;
        crate::remove_on_early_exit(dir.path());
        let mut nodes = Vec::new();
        let (endpoints, security) = match endpoints {
            Some(e) => (e, crate::cli::security(insecure, creds.as_deref(), None)?),
            None => {
                let security = if insecure { metakv::Security::Insecure } else { metakv::Security::Tls };
                let config = |id: u64| {
                    let mut c = NodeConfig::new(id, dir.path().join(format!("n{id}")), "127.0.0.1:0");
                    c.cluster_id = cluster_id.clone();
                    c.security = security;
                    c
                };
                let first = Node::start(config(1)).await?;
                let seed = first.addr().to_owned();
                for id in 2..=3 {
                    let mut c = config(id);
                    c.join = Some(seed.clone());
                    if !insecure {
                        c.join_token = Some(first.join_token(Duration::from_secs(60)).await?.token);
                    }
                    nodes.push(Node::start(c).await?);
                }
                nodes.insert(0, first);
                let security = match insecure {
                    true => crate::cli::Security::Insecure,
                    false => crate::cli::Security::Creds(metakv::ClientCreds::load(&dir.path().join("n1").join(metakv::tls::ADMIN_CREDS))?),
                };
                (vec![seed], security)
            }
        };
        progress_note_security(insecure);
        let client = |endpoints: Vec<String>| crate::cli::client(&security, endpoints, &cluster_id);
        let probe = client(endpoints)?;
        let status = probe.status().await?;
        let leader_addr = if status.role == Role::Leader {
            status.addr.clone()
        } else {
            let leader = status.leader.ok_or("the cluster has no leader")?;
            status.members.iter().find(|m| m.id == leader).map(|m| m.addr.clone()).ok_or("leader not among members")?
        };
        let bucket = args.bucket.clone();
        if let Err(e) = probe.create_bucket(&bucket).await {
            return Err(match e.rejection_kind() {
                Some(metakv::RejectionKind::BucketExists) => metakv::Error::Rejected(metakv::Rejection {
                    kind: metakv::RejectionKind::BucketExists,
                    message: format!(
                        "bucket {bucket:?} exists: bench writes only into a bucket it makes (and drops it \
                         afterwards); drop it, or name another with --bucket"
                    ),
                }),
                _ => e,
            }
            .into());
        }
        let keeping = if args.keep { "kept afterwards (--keep)" } else { "dropped afterwards; --keep keeps it" };
        eprintln!("metakv bench: writing {} puts into bucket {bucket:?}, made for this run and {keeping}", args.ops);
        let outcome = measure(&args, &security, &cluster_id, &probe, &leader_addr, insecure).await;
        if !args.keep
            && let Err(e) = probe.drop_bucket(&bucket).await
        {
            eprintln!("metakv bench: could not drop bucket {bucket:?}: {e}");
        }
        for n in &nodes {
            n.shutdown().await;
        }
        outcome
    })
}

/// The run itself, once the bucket is made: `args.ops` puts from `args.clients` clients, and
/// the result line.
async fn measure(
    args: &BenchArgs,
    security: &crate::cli::Security,
    cluster_id: &str,
    probe: &metakv::Client,
    leader_addr: &str,
    insecure: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut bench_user_made = None;
    let security = match (security, args.as_user) {
        (crate::cli::Security::Creds(creds), true) => {
            let (user, token) = bench_user(probe, &args.bucket).await?;
            bench_user_made = Some(user);
            crate::cli::Security::Creds(creds.clone().with_token(token))
        }
        (crate::cli::Security::Insecure, true) => {
            return Err("--as-user needs TLS (not with --insecure)".into());
        }
        (s, false) => match s {
            crate::cli::Security::Creds(c) => crate::cli::Security::Creds(c.clone()),
            crate::cli::Security::Insecure => crate::cli::Security::Insecure,
        },
    };
    let outcome = run_clients(args, &security, cluster_id, leader_addr, insecure).await;
    if let Some(user) = bench_user_made {
        forget_bench_user(probe, &user).await;
    }
    outcome
}

async fn run_clients(
    args: &BenchArgs,
    security: &crate::cli::Security,
    cluster_id: &str,
    leader_addr: &str,
    insecure: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = |endpoints: Vec<String>| crate::cli::client(security, endpoints, cluster_id);
    let value = vec![b'v'; args.value_bytes as usize];
    // Exactly `ops` puts: the first `ops % clients` clients do one more.
    let clients = args.clients.min(args.ops);
    let share = |c: u64| args.ops / clients + u64::from(c < args.ops % clients);
    let progress = std::sync::Arc::new(crate::progress::Progress::bar(args.ops, "writes"));
    progress.note(format!(
        "{clients} clients writing {} records of {} bytes",
        args.ops, args.value_bytes
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (value, key_bytes, bucket, puts) = (
            value.clone(),
            args.key_bytes as usize,
            args.bucket.clone(),
            share(c),
        );
        let progress = std::sync::Arc::clone(&progress);
        let client = client(vec![leader_addr.to_owned()])?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(puts as usize);
            for i in 0..puts {
                let mut key = format!("c{c:04}k{i:09}").into_bytes();
                key.resize(key_bytes, b'_');
                let t = Instant::now();
                client.put(&bucket, &key, &value, Expect::Any).await?;
                latencies.push(t.elapsed());
                progress.inc(1);
            }
            Ok::<_, metakv::Error>(latencies)
        }));
    }
    let before = client(vec![leader_addr.to_owned()])?.status().await?;
    let mut all: Vec<Duration> = Vec::with_capacity(args.ops as usize);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed();
    progress.finish();
    let after = client(vec![leader_addr.to_owned()])?.status().await?;
    all.sort();
    let q =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    outln!(
        "metakv bench: tls={} user={} clients={} ops={} value_bytes={} writes_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} leader_log_entries_per_fsync={:.1}",
        !insecure,
        if args.as_user { "writer" } else { "admin" },
        clients,
        all.len(),
        args.value_bytes,
        all.len() as f64 / elapsed.as_secs_f64(),
        q(0.50),
        q(0.99),
        all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        (after.log_entries - before.log_entries) as f64
            / (after.log_fsyncs - before.log_fsyncs).max(1) as f64
    );
    Ok(())
}

/// A role that writes only `bucket`, and a user that holds it, both named for this run:
/// (the user, its token).
async fn bench_user(
    admin: &metakv::Client,
    bucket: &str,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    use metakv::{AccessReply, AccessRequest, Grants};
    let name = format!("bench-{}", std::process::id());
    let role = AccessRequest::RoleAdd {
        name: name.clone(),
        grants: Grants {
            read: vec![],
            write: vec![bucket.to_owned()],
            admin: false,
        },
    };
    admin.access(role).await?;
    let user = AccessRequest::UserAdd {
        name: name.clone(),
        roles: vec![name.clone()],
    };
    match admin.access(user).await? {
        AccessReply::Token { token, .. } => Ok((name, token)),
        _ => Err("user add answered something other than a token".into()),
    }
}

/// Removes the user and role [`bench_user`] made (named alike).
async fn forget_bench_user(admin: &metakv::Client, name: &str) {
    use metakv::AccessRequest;
    for request in [
        AccessRequest::UserRemove {
            name: name.to_owned(),
        },
        AccessRequest::RoleRemove {
            name: name.to_owned(),
        },
    ] {
        if let Err(e) = admin.access(request).await {
            eprintln!("metakv bench: could not remove the run's user and role {name:?}: {e}");
        }
    }
}
