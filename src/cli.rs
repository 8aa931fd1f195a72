//! The client and admin commands of `metakv`: they talk to any node of a running cluster.
//!
//! Exit codes: 0 success; 2 usage error (clap); 3 key or bucket not found; 4 expectation
//! failed; 5 bucket paused; 1 any other error. Errors are one line on stderr.

use std::io::Read;
use std::process::ExitCode;

use base64::Engine;
use clap::Subcommand;
use metakv::{
    Applied, Client, Consistency, Error, Expect, GcOutcome, JobRecord, Kv, NodeStatus, Record,
    RejectionKind, Role, WatchEvent,
};
use serde_json::{Value, json};

use crate::maintenance;

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every member's role, applied index and file size, as each reports it.
    Status,
    /// The members and their addresses.
    Members,
    /// Adds node ID at ADDR (learner first, then voter once caught up).
    AddNode { id: u64, addr: String },
    /// Removes node ID from the voters.
    RemoveNode { id: u64 },
}

#[derive(Debug, Subcommand)]
pub enum BucketCmd {
    Create {
        name: String,
    },
    List,
    Drop {
        name: String,
    },
    /// State, live records and tombstones, and the bucket's last (or running) pause or resume.
    Status {
        name: String,
    },
    /// Pauses a bucket to an archive: exports it, verifies the archive, then drops its data.
    /// Reads and writes answer "bucket paused" until it is resumed.
    Pause {
        name: String,
        /// Where the archive goes: a directory (`file:///dir` or a plain path), or
        /// `s3://bucket/prefix` in a build with the `s3` feature.
        #[arg(long)]
        archive: String,
        /// Print the operation id and return once the bucket is pausing.
        #[arg(long)]
        no_wait: bool,
    },
    /// Resumes a paused bucket from its archive, with every record and revision it had.
    Resume {
        name: String,
        /// The archive's location if its objects were moved since the pause.
        #[arg(long)]
        archive: Option<String>,
        /// Print the operation id and return once the bucket is resuming.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GcCmd {
    /// Runs a tombstone GC job now and waits for it, showing its progress.
    Run {
        /// Report what would be purged; purge and compact nothing.
        #[arg(long)]
        dry_run: bool,
        /// Collect only tombstones at least this old (e.g. 0, 30s, 10m, 1h); default: the
        /// cluster's gc.min_age.
        #[arg(long, value_parser = parse_duration_ms)]
        min_age: Option<u64>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// The running job and the last jobs' records, newest first.
    Status {
        #[arg(long, default_value_t = 5)]
        limit: u32,
    },
}

/// `0`, `500ms`, `30s`, `10m`, `1h`, `2d` as milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 0, 500ms, 30s, 10m, 1h)"))?;
    let scale = match unit {
        "" if n == 0 => 1,
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: a duration needs a unit: ms, s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Integrity check: redb's page checksums, every record's crc and contents, every index.
    /// Of the node at --endpoint while it runs (its requests wait meanwhile), or with
    /// --data-dir of a stopped node's files. Exit 1 with every problem listed.
    Check {
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Compaction (a rebuild of the state file): of every node, one at a time, followers
    /// first; of one with --node; or with --offline --data-dir of a stopped node's files.
    Compact {
        #[arg(long, conflicts_with = "offline")]
        node: Option<u64>,
        #[arg(long, requires = "data_dir")]
        offline: bool,
        #[arg(long, requires = "offline")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Writes a backup of the whole store to FILE: taken on the leader, consistent as of a
    /// moment after every write acknowledged before the command, checked whole (size, crc,
    /// every frame) and made durable before FILE appears.
    Backup {
        /// Where the backup goes (written as FILE.partial until it is whole).
        file: std::path::PathBuf,
    },
    /// Makes a new node's data dir from a backup, offline: start it with `serve`, then add
    /// nodes with `serve --join`. Records keep their revisions, and new writes get higher ones.
    Restore {
        /// A backup written by `metakv backup`.
        file: std::path::PathBuf,
        /// The new node's data dir (created; it must hold no node files).
        #[arg(long, default_value = "metakv-data")]
        data_dir: std::path::PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The address the new node will serve on (it records its own address on its first
        /// start if it serves elsewhere).
        #[arg(long, default_value = "127.0.0.1:7379")]
        advertise: String,
    },
    /// Members, their roles and progress; add and remove nodes.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Tombstone GC: run a job now (or a dry run), and the status of the last jobs.
    #[command(subcommand)]
    Gc(GcCmd),
    /// Create, list, drop, pause and resume buckets, and show one's state.
    #[command(subcommand)]
    Bucket(BucketCmd),
    /// Writes VALUE (or --file, or standard input) under KEY.
    Put {
        bucket: String,
        key: String,
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        file: Option<std::path::PathBuf>,
        /// Only if the key's current revision is N.
        #[arg(long, conflicts_with = "if_absent")]
        if_rev: Option<u64>,
        /// Only if the key has no live record.
        #[arg(long)]
        if_absent: bool,
    },
    /// Prints KEY's record: a linearizable read through the leader, or --local.
    Get {
        bucket: String,
        key: String,
        /// This node's copy, without asking the leader (may be stale).
        #[arg(long)]
        local: bool,
    },
    /// Deletes KEY, leaving a tombstone (watchers and compare-and-set see it).
    Del {
        bucket: String,
        key: String,
        /// Only if the key's current revision is N.
        #[arg(long)]
        if_rev: Option<u64>,
    },
    /// Lists records in key order.
    Ls {
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Lists tombstones too.
        #[arg(long)]
        tombstones: bool,
    },
    /// Prints changes as they happen (one line each), from revision --from-rev on.
    Watch {
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        from_rev: u64,
    },
}

/// A failure with its exit code.
pub struct Fail(pub u8, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match e.rejection_kind() {
            Some(RejectionKind::BucketNotFound) => 3,
            Some(RejectionKind::BucketPaused) => 5,
            _ => 1,
        };
        Fail(code, e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(1, e.to_string())
    }
}

pub fn run(endpoint: String, cluster_id: String, json: bool, cmd: ClientCmd) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(Fail(1, e.to_string())),
    };
    let client = Client::new(vec![endpoint], &cluster_id);
    match runtime.block_on(command(&client, json, cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

fn fail(Fail(code, message): Fail) -> ExitCode {
    eprintln!("metakv: {message}");
    ExitCode::from(code)
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    }
}

/// `value` as UTF-8 text when it is, else `value_base64`.
fn value_field(obj: &mut serde_json::Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => obj.insert("value".into(), json!(s)),
        Err(_) => obj.insert(
            "value_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(value)),
        ),
    };
}

fn record_json(bucket: Option<&str>, key: &[u8], r: &Record) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(b) = bucket {
        o.insert("bucket".into(), json!(b));
    }
    o.insert("key".into(), json!(String::from_utf8_lossy(key)));
    value_field(&mut o, &r.value);
    o.insert("rev".into(), json!(r.rev));
    o.insert("create_rev".into(), json!(r.create_rev));
    o.insert("version".into(), json!(r.version));
    o.insert("deleted".into(), json!(r.deleted));
    Value::Object(o)
}

fn written(applied: Applied, what: &str) -> Result<u64, Fail> {
    match applied {
        Applied::Written { rev } => Ok(rev),
        Applied::Conflict { current } => Err(Fail(
            4,
            format!(
                "{what}: expectation failed (current revision: {})",
                current.map_or("none".into(), |r| r.to_string())
            ),
        )),
        Applied::NotFound => Err(Fail(3, format!("{what}: not found"))),
        other => Err(Fail(1, format!("{what}: unexpected answer {other:?}"))),
    }
}

/// A GC job record as `--json` prints it: enumerations in lower case, one entry per node.
fn job_json(r: &JobRecord) -> Value {
    let (outcome, reason) = match &r.outcome {
        GcOutcome::Running => ("running", None),
        GcOutcome::Handoff { .. } => ("handoff", None),
        GcOutcome::Succeeded => ("succeeded", None),
        GcOutcome::Failed { reason } => ("failed", Some(reason.clone())),
    };
    let trigger = match r.trigger {
        metakv::gc_engine::Trigger::Timer => "timer",
        metakv::gc_engine::Trigger::Threshold { .. } => "threshold",
        metakv::gc_engine::Trigger::Demand => "demand",
    };
    let nodes: Vec<Value> = r
        .members
        .iter()
        .map(|&id| {
            let collected = r.collected.iter().find(|(n, _)| *n == id).map(|(_, c)| *c);
            let c = r.compactions.iter().find(|c| c.node == id);
            json!({"id": id, "collected": collected,
                   "bytes_before": c.map(|c| c.bytes_before), "bytes_after": c.map(|c| c.bytes_after)})
        })
        .collect();
    let phases: Vec<Value> = r
        .phases
        .iter()
        .map(|p| json!({"phase": p.phase, "ms": p.ms}))
        .collect();
    let sample: Vec<Value> = r
        .sample
        .iter()
        .map(|t| json!({"bucket": t.bucket, "key": String::from_utf8_lossy(&t.key), "rev": t.rev}))
        .collect();
    json!({"job": r.id.to_string(), "outcome": outcome, "reason": reason, "trigger": trigger,
           "dry_run": r.dry_run, "leader": r.leader, "started_ms": r.started_ms,
           "finished_ms": r.finished_ms, "agreed": r.agreed, "purged": r.purged,
           "skipped": r.skipped, "nodes": nodes, "phases": phases, "sample": sample})
}

fn status_line(s: &NodeStatus) -> String {
    format!(
        "{:>4}  {:<21}  {:<9}  term {:<4} applied {:<8} committed {:<8} state {} B, log {} B",
        s.id,
        s.addr,
        role(s.role),
        s.term,
        s.applied,
        s.committed,
        s.state_file_bytes,
        s.log_file_bytes
    )
}

fn outcome(o: &GcOutcome) -> String {
    match o {
        GcOutcome::Running => "running".into(),
        GcOutcome::Handoff { compact } => format!("running (next leader compacts node {compact})"),
        GcOutcome::Succeeded => "succeeded".into(),
        GcOutcome::Failed { reason } => format!("failed: {reason}"),
    }
}

fn print_job(r: &JobRecord) {
    let took = r.finished_ms.map_or(String::new(), |f| {
        format!(", took {} ms", f.saturating_sub(r.started_ms))
    });
    outln!(
        "job {}{}  {}  ({:?} on leader {}, min age {} ms{took})",
        r.id,
        if r.dry_run { " (dry run)" } else { "" },
        outcome(&r.outcome),
        r.trigger,
        r.leader,
        r.min_age_ms
    );
    let collected: Vec<String> = r
        .collected
        .iter()
        .map(|(n, c)| format!("node {n}: {c}"))
        .collect();
    outln!("  collected  {}", collected.join(", "));
    outln!(
        "  agreed {}  purged {}  skipped by the guard {}",
        r.agreed,
        r.purged,
        r.skipped
    );
    for c in &r.compactions {
        outln!(
            "  node {} state file {} B -> {} B",
            c.node,
            c.bytes_before,
            c.bytes_after
        );
    }
    if !r.phases.is_empty() {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {} ms", p.phase, p.ms))
            .collect();
        outln!("  phases  {}", phases.join(", "));
    }
    for t in &r.sample {
        outln!(
            "  would purge {}/{} @{}",
            t.bucket,
            String::from_utf8_lossy(&t.key),
            t.rev
        );
    }
}

async fn command(client: &Client, json: bool, cmd: ClientCmd) -> Result<(), Fail> {
    match cmd {
        ClientCmd::Check {
            data_dir: Some(dir),
        } => maintenance::check_offline(&dir, json)?,
        ClientCmd::Check { data_dir: None } => maintenance::check_live(client, json).await?,
        ClientCmd::Compact {
            data_dir: Some(dir),
            ..
        } => maintenance::compact_offline(&dir, json)?,
        ClientCmd::Compact { node, .. } => maintenance::compact_live(client, node, json).await?,
        ClientCmd::Backup { file } => maintenance::backup(client, &file, json).await?,
        ClientCmd::Restore {
            file,
            data_dir,
            id,
            advertise,
        } => maintenance::restore(&file, &data_dir, id, &advertise, json)?,
        ClientCmd::Put {
            bucket,
            key,
            value,
            file,
            if_rev,
            if_absent,
        } => {
            let value = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| Fail(1, format!("reading {}: {e}", f.display())))?,
                (None, None) => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
            };
            let expect = match (if_rev, if_absent) {
                (Some(r), _) => Expect::Rev(r),
                (None, true) => Expect::Absent,
                (None, false) => Expect::Any,
            };
            let rev = written(
                client.put(&bucket, key.as_bytes(), &value, expect).await?,
                &format!("put {bucket}/{key}"),
            )?;
            if json {
                outln!("{}", json!({"rev": rev}))
            } else {
                outln!("{rev}")
            }
        }
        ClientCmd::Get { bucket, key, local } => {
            let consistency = if local {
                Consistency::Local
            } else {
                Consistency::Linearizable
            };
            let record = client
                .get_with(&bucket, key.as_bytes(), consistency, false)
                .await?
                .ok_or_else(|| Fail(3, format!("{bucket}/{key}: not found")))?;
            if json {
                outln!("{}", record_json(Some(&bucket), key.as_bytes(), &record));
            } else {
                use std::io::Write;
                let mut out = std::io::stdout();
                out.write_all(&record.value)?;
                if std::io::IsTerminal::is_terminal(&out) {
                    writeln!(out)?;
                }
            }
        }
        ClientCmd::Del {
            bucket,
            key,
            if_rev,
        } => {
            let expect = if_rev.map_or(Expect::Any, Expect::Rev);
            let rev = written(
                client.delete(&bucket, key.as_bytes(), expect).await?,
                &format!("del {bucket}/{key}"),
            )?;
            if json {
                outln!("{}", json!({"rev": rev}))
            } else {
                outln!("{rev}")
            }
        }
        ClientCmd::Ls {
            bucket,
            prefix,
            limit,
            tombstones,
        } => list(client, json, &bucket, &prefix, limit, tombstones).await?,
        ClientCmd::Watch {
            bucket,
            prefix,
            from_rev,
        } => watch(client, json, &bucket, &prefix, from_rev).await?,
        ClientCmd::Gc(cmd) => gc_command(client, json, cmd).await?,
        ClientCmd::Cluster(cmd) => cluster_command(client, json, cmd).await?,
        ClientCmd::Bucket(cmd) => bucket_command(client, json, cmd).await?,
    }
    Ok(())
}

/// `ls`: a bucket's records in key order, a page at a time.
async fn list(
    client: &Client,
    json: bool,
    bucket: &str,
    prefix: &str,
    limit: usize,
    tombstones: bool,
) -> Result<(), Fail> {
    let mut after = None;
    let mut left = limit;
    while left > 0 {
        let page = client
            .scan(
                bucket,
                prefix.as_bytes(),
                after.take(),
                left.min(1000) as u32,
                tombstones,
                Consistency::Linearizable,
            )
            .await?;
        for (key, r) in &page.items {
            if json {
                let mut v = record_json(None, key, r);
                if let Value::Object(o) = &mut v {
                    o.remove("create_rev");
                    o.remove("version");
                }
                outln!("{v}");
            } else {
                let flag = if r.deleted { " (deleted)" } else { "" };
                outln!(
                    "{}\trev {}{flag}\t{}",
                    String::from_utf8_lossy(key),
                    r.rev,
                    String::from_utf8_lossy(&r.value)
                );
            }
        }
        left = left.saturating_sub(page.items.len());
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(())
}

/// `watch`: every change from `from_rev` on, until the connection ends or changes were compacted.
async fn watch(
    client: &Client,
    json: bool,
    bucket: &str,
    prefix: &str,
    from_rev: u64,
) -> Result<(), Fail> {
    let mut watch = client.watch(bucket, prefix.as_bytes(), from_rev);
    loop {
        match watch.next().await? {
            WatchEvent::Change { key, record } => {
                if json {
                    let mut v = record_json(None, &key, &record);
                    if let Value::Object(o) = &mut v {
                        o.insert(
                            "type".into(),
                            json!(if record.deleted { "delete" } else { "put" }),
                        );
                    }
                    outln!("{v}");
                } else {
                    let kind = if record.deleted { "delete" } else { "put" };
                    outln!(
                        "{} {kind} {} {}",
                        record.rev,
                        String::from_utf8_lossy(&key),
                        String::from_utf8_lossy(&record.value)
                    );
                }
            }
            WatchEvent::Compacted { floor } => {
                return Err(Fail(
                    1,
                    format!(
                        "watch: changes up to revision {floor} were compacted; list the bucket and watch from there"
                    ),
                ));
            }
        }
    }
}

/// `gc run` and `gc status`.
async fn gc_command(client: &Client, json: bool, cmd: GcCmd) -> Result<(), Fail> {
    match cmd {
        GcCmd::Run {
            dry_run,
            min_age,
            no_wait,
        } => {
            let job = client.gc_run(dry_run, min_age).await?;
            if no_wait {
                if json {
                    outln!("{}", json!({"job": job.to_string()}));
                } else {
                    outln!("job {job} started");
                }
                return Ok(());
            }
            let progress = crate::progress::Progress::spinner();
            progress.note(format!("GC job {job} started"));
            let record = loop {
                let status = client.gc_status(20).await?;
                if let Some(r) = status
                    .jobs
                    .iter()
                    .find(|r| r.id == job && r.outcome.is_finished())
                {
                    break r.clone();
                }
                if let Some(p) = status.running.filter(|p| p.job == job) {
                    progress.note(format!(
                        "GC job {job} {}: collected {:?}, agreed {}, purged {}, compacted nodes {:?}",
                        p.phase, p.collected, p.agreed, p.purged, p.compacted
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            progress.finish();
            if json {
                outln!("{}", job_json(&record));
            } else {
                print_job(&record);
            }
            if let GcOutcome::Failed { reason } = &record.outcome {
                return Err(Fail(1, format!("GC job {job} failed: {reason}")));
            }
        }
        GcCmd::Status { limit } => {
            let status = client.gc_status(limit).await?;
            if json {
                let running = status.running.as_ref().map(|p| {
                    json!({"job": p.job.to_string(), "phase": p.phase, "agreed": p.agreed,
                           "purged": p.purged})
                });
                let jobs: Vec<Value> = status.jobs.iter().map(job_json).collect();
                outln!("{}", json!({"running": running, "jobs": jobs}));
            } else {
                match &status.running {
                    Some(p) => outln!(
                        "running: job {} in {}, agreed {}, purged {}",
                        p.job,
                        p.phase,
                        p.agreed,
                        p.purged
                    ),
                    None => outln!("no job running"),
                }
                if status.jobs.is_empty() {
                    outln!("no job has run yet");
                }
                for r in &status.jobs {
                    print_job(r);
                }
            }
        }
    }
    Ok(())
}

/// `cluster status`, `members`, `add-node`, `remove-node`.
async fn cluster_command(client: &Client, json: bool, cmd: ClusterCmd) -> Result<(), Fail> {
    match cmd {
        ClusterCmd::Status => {
            let cs = client.cluster_status().await?;
            if json {
                let nodes: Vec<Value> = cs
                    .nodes
                    .iter()
                    .map(|n| match &n.status {
                        Ok(s) => json!({"id": s.id, "addr": s.addr, "role": role(s.role), "applied": s.applied, "committed": s.committed, "file_bytes": s.state_file_bytes + s.log_file_bytes}),
                        Err(e) => json!({"id": n.member.id, "addr": n.member.addr, "role": "unreachable", "error": e}),
                    })
                    .collect();
                outln!(
                    "{}",
                    json!({"leader": cs.leader, "term": cs.term, "nodes": nodes})
                );
            } else {
                outln!(
                    "leader {}  term {}",
                    cs.leader.map_or("none".into(), |l| l.to_string()),
                    cs.term
                );
                for n in &cs.nodes {
                    match &n.status {
                        Ok(s) => outln!("{}", status_line(s)),
                        Err(e) => outln!(
                            "{:>4}  {:<21}  unreachable: {e}",
                            n.member.id,
                            n.member.addr
                        ),
                    }
                }
            }
        }
        ClusterCmd::Members => {
            let s = client.status().await?;
            if json {
                let members: Vec<Value> = s
                    .members
                    .iter()
                    .map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter}))
                    .collect();
                outln!("{}", json!({"members": members}));
            } else {
                for m in &s.members {
                    outln!(
                        "{:>4}  {:<21}  {}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" }
                    );
                }
            }
        }
        ClusterCmd::AddNode { id, addr } => {
            client.add_node(id, &addr).await?;
            if json {
                outln!("{}", json!({"added": id}))
            } else {
                outln!("node {id} at {addr} is a voter")
            }
        }
        ClusterCmd::RemoveNode { id } => {
            client.remove_node(id).await?;
            if json {
                outln!("{}", json!({"removed": id}))
            } else {
                outln!("node {id} removed")
            }
        }
    }
    Ok(())
}

/// `bucket create`, `drop`, `list`, `status`, `pause`, `resume`.
async fn bucket_command(client: &Client, json: bool, cmd: BucketCmd) -> Result<(), Fail> {
    match cmd {
        BucketCmd::Create { name } => {
            client.create_bucket(&name).await?;
            if json {
                outln!("{}", json!({"bucket": name}))
            } else {
                outln!("bucket {name} created")
            }
        }
        BucketCmd::Drop { name } => {
            client.drop_bucket(&name).await?;
            if json {
                outln!("{}", json!({"bucket": name, "dropped": true}))
            } else {
                outln!("bucket {name} dropped")
            }
        }
        BucketCmd::List => {
            for (name, info) in client.buckets().await? {
                if name == metakv::store::SYS_BUCKET {
                    continue;
                }
                if json {
                    outln!(
                        "{}",
                        json!({"bucket": name, "state": info.state.as_str(), "records": info.records, "tombstones": info.tombstones})
                    );
                } else {
                    outln!(
                        "{name:<32} {:<9} {:>10} records {:>10} tombstones",
                        info.state.as_str(),
                        info.records,
                        info.tombstones
                    );
                }
            }
        }
        BucketCmd::Status { name } => {
            let info = client.bucket(&name).await?;
            let h = client.hibernation(&name).await?;
            if json {
                outln!(
                    "{}",
                    json!({"bucket": name, "state": info.state.as_str(), "records": info.records, "tombstones": info.tombstones, "purge_floor": info.purge_floor, "hibernation": hibernation_json(&h)})
                );
            } else {
                outln!(
                    "{name}: {}, {} records, {} tombstones, purge floor {}",
                    info.state.as_str(),
                    info.records,
                    info.tombstones,
                    info.purge_floor
                );
                if let Some(line) = hibernation_line(&h) {
                    outln!("{line}");
                }
                if let Some(p) = &h.running {
                    outln!("running: {}", progress_line(&name, p));
                }
            }
        }
        BucketCmd::Pause {
            name,
            archive,
            no_wait,
        } => {
            let op = client.start_pause(&name, &archive).await?;
            hibernation_finish(client, &name, op, "paused", no_wait, json).await?;
        }
        BucketCmd::Resume {
            name,
            archive,
            no_wait,
        } => {
            let op = client.start_resume(&name, archive.as_deref()).await?;
            hibernation_finish(client, &name, op, "resumed", no_wait, json).await?;
        }
    }
    Ok(())
}

/// Waits for a pause or resume with progress on stderr (unless `no_wait`), then prints its
/// outcome.
async fn hibernation_finish(
    client: &Client,
    bucket: &str,
    op: metakv::OpId,
    done: &str,
    no_wait: bool,
    json: bool,
) -> Result<(), Fail> {
    if no_wait {
        if json {
            outln!("{}", json!({"bucket": bucket, "op": op.to_string()}));
        } else {
            outln!("{bucket}: op {op} started");
        }
        return Ok(());
    }
    let progress = crate::progress::Progress::spinner();
    let status = client
        .hibernation_wait(bucket, op, |s| {
            if let Some(p) = s.running.as_ref().filter(|p| p.op == op) {
                progress.note(progress_line(bucket, p));
            }
        })
        .await;
    progress.finish();
    let status = status?;
    if json {
        outln!("{}", hibernation_json(&status));
    } else {
        let record = status.record.as_ref();
        let manifest = record.and_then(|r| r.manifest.as_ref());
        outln!(
            "{bucket} {done} (op {op}): {} records, {} archive bytes, {}",
            manifest.map_or(0, |m| m.records),
            manifest.map_or(0, |m| m.bytes),
            record.map_or(String::new(), |r| format!("{}/{}", r.archive, r.objects))
        );
    }
    Ok(())
}

fn progress_line(bucket: &str, p: &metakv::OpProgress) -> String {
    let of = |n: u64, total: Option<u64>| match total {
        Some(t) => format!("{n}/{t}"),
        None => n.to_string(),
    };
    format!(
        "{} {bucket} (op {}): {} {} records, {} bytes",
        p.kind.as_str(),
        p.op,
        p.step,
        of(p.records, p.records_total),
        of(p.bytes, p.bytes_total)
    )
}

fn hibernation_line(h: &metakv::HibernationStatus) -> Option<String> {
    let r = h.record.as_ref()?;
    let mut line = format!(
        "last {} (op {}): {}, archive {}/{}",
        r.kind.as_str(),
        r.op,
        r.phase.as_str(),
        r.archive,
        r.objects
    );
    if let Some(m) = &r.manifest {
        line.push_str(&format!(
            ", {} records, {} bytes at revision {}",
            m.records, m.bytes, m.rev
        ));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!(", error: {e}"));
    }
    Some(line)
}

fn hibernation_json(h: &metakv::HibernationStatus) -> Value {
    let record = h.record.as_ref().map(|r| {
        json!({"op": r.op.to_string(), "kind": r.kind.as_str(), "phase": r.phase.as_str(),
               "archive": r.archive, "objects": r.objects, "started_ms": r.started_ms,
               "finished_ms": r.finished_ms, "error": r.error,
               "manifest": r.manifest.as_ref().map(|m| json!({"records": m.records, "bytes": m.bytes, "rev": m.rev, "chunks": m.chunks.len()}))})
    });
    let running = h.running.as_ref().map(|p| {
        json!({"op": p.op.to_string(), "kind": p.kind.as_str(), "step": p.step, "records": p.records,
               "bytes": p.bytes, "records_total": p.records_total, "bytes_total": p.bytes_total})
    });
    json!({"bucket": h.bucket, "state": h.state.as_str(), "last": record, "running": running})
}
