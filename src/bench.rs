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
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Puts in all.
    #[arg(long, default_value_t = 50_000)]
    pub ops: usize,
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
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
        match probe.create_bucket("bench").await {
            Ok(()) => {}
            Err(e) if e.rejection_kind() == Some(metakv::RejectionKind::BucketExists) => {}
            Err(e) => return Err(e.into()),
        }
        let security = match (&security, args.as_user) {
            (crate::cli::Security::Creds(creds), true) => {
                let token = bench_user(&probe).await?;
                crate::cli::Security::Creds(creds.clone().with_token(token))
            }
            (crate::cli::Security::Insecure, true) => return Err("--as-user needs TLS (not with --insecure)".into()),
            (s, false) => match s {
                crate::cli::Security::Creds(c) => crate::cli::Security::Creds(c.clone()),
                crate::cli::Security::Insecure => crate::cli::Security::Insecure,
            },
        };
        let client = |endpoints: Vec<String>| crate::cli::client(&security, endpoints, &cluster_id);
        let value = vec![b'v'; args.value_bytes];
        let per_client = args.ops.div_ceil(args.clients);
        let progress = std::sync::Arc::new(crate::progress::Progress::bar((per_client * args.clients) as u64, "writes"));
        progress.note(format!("{} clients writing {} records of {} bytes", args.clients, per_client * args.clients, args.value_bytes));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let (value, key_bytes) = (value.clone(), args.key_bytes);
            let progress = std::sync::Arc::clone(&progress);
            let client = client(vec![leader_addr.clone()])?;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let mut key = format!("c{c:04}k{i:09}").into_bytes();
                    key.resize(key_bytes, b'_');
                    let t = Instant::now();
                    client.put("bench", &key, &value, Expect::Any).await?;
                    latencies.push(t.elapsed());
                    progress.inc(1);
                }
                Ok::<_, metakv::Error>(latencies)
            }));
        }
        let before = client(vec![leader_addr.clone()])?.status().await?;
        let mut all: Vec<Duration> = Vec::with_capacity(args.ops);
        for t in tasks {
            all.extend(t.await??);
        }
        let elapsed = started.elapsed();
        progress.finish();
        let after = client(vec![leader_addr.clone()])?.status().await?;
        all.sort();
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
        outln!(
            "metakv bench: tls={} user={} clients={} ops={} value_bytes={} writes_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} leader_log_entries_per_fsync={:.1}",
            !insecure,
            if args.as_user { "writer" } else { "admin" },
            args.clients,
            all.len(),
            args.value_bytes,
            all.len() as f64 / elapsed.as_secs_f64(),
            q(0.50),
            q(0.99),
            all.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            (after.log_entries - before.log_entries) as f64 / (after.log_fsyncs - before.log_fsyncs).max(1) as f64
        );
        for n in &nodes {
            n.shutdown().await;
        }
        Ok(())
    })
}

/// A role that writes the bench bucket, and a new user that holds it; its token.
async fn bench_user(admin: &metakv::Client) -> Result<String, Box<dyn std::error::Error>> {
    use metakv::{AccessReply, AccessRequest, Grants};
    let role = AccessRequest::RoleAdd {
        name: "bench-writer".into(),
        grants: Grants {
            read: vec![],
            write: vec!["bench".into()],
            admin: false,
        },
    };
    match admin.access(role).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("exists already") => {}
        Err(e) => return Err(e.into()),
    }
    let user = AccessRequest::UserAdd {
        name: format!("bench-{}", std::process::id()),
        roles: vec!["bench-writer".into()],
    };
    match admin.access(user).await? {
        AccessReply::Token { token, .. } => Ok(token),
        other => Err(format!("user add answered {other:?}").into()),
    }
}
