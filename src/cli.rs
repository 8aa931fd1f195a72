//! The client and admin commands of `metakv`: they talk to any node of a running cluster.
//!
//! Exit codes: the README's table (enforced by `tests/cli.rs`, `exit_codes_follow_the_readme`).
//! Errors are one line on stderr.

use std::io::Read;
use std::process::ExitCode;

use metakv::{
    Applied, Client, Consistency, Error, Expect, GcOutcome, Kv, RejectionKind, WatchEvent,
};
use serde_json::{Value, json};

pub use crate::args::{BucketCmd, ClientCmd, ClusterCmd, GcCmd, parse_duration_ms};
use crate::maintenance;
use crate::output::{
    count, hibernation_json, hibernation_line, job_json, print_job, progress_line, record_json,
    role, status_line,
};

/// A failure with its exit code.
pub struct Fail(pub u8, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match e.rejection_kind() {
            Some(RejectionKind::Invalid) => 2,
            Some(RejectionKind::BucketNotFound | RejectionKind::NotFound) => 3,
            Some(RejectionKind::BucketPaused | RejectionKind::BucketState) => 5,
            Some(RejectionKind::BucketExists | RejectionKind::Exists) => 8,
            _ if matches!(e, Error::Denied { .. }) => 6,
            _ if matches!(e, Error::Ambiguous { .. }) => 7,
            _ => 1,
        };
        let mut message = e.to_string();
        if code == 7 {
            message.push_str(
                " (read it back to know; a write with --if-rev or --if-absent is safe to send again)",
            );
        }
        Fail(code, message)
    }
}

impl Fail {
    /// The same failure, its message after `doing: `.
    pub fn doing(self, doing: &str) -> Fail {
        Fail(self.0, format!("{doing}: {}", self.1))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(1, e.to_string())
    }
}

/// The nodes an `--endpoint` names: `host:port` items separated by commas.
pub fn endpoints(raw: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(format!("--endpoint {raw:?} names no node"));
    }
    for item in &items {
        let port = item.rsplit_once(':').filter(|(host, _)| !host.is_empty());
        if !port.is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0)) {
            return Err(format!(
                "--endpoint {item:?} is not host:port (for example 127.0.0.1:7379)"
            ));
        }
    }
    Ok(items)
}

/// A usage error (exit code 2), before anything was sent.
pub fn usage_error(json: bool, message: &str) -> ExitCode {
    fail(json, Fail(2, message.to_owned()))
}

/// How a command talks to the nodes.
#[derive(Debug)]
pub enum Security {
    Creds(metakv::ClientCreds),
    Insecure,
}

/// Where the CLI finds credentials when `--creds` is not given: the admin credentials of a
/// node started in this directory with the defaults (`metakv serve`).
pub const DEFAULT_CREDS: &str = "metakv-data/admin.creds";

/// The credentials a command presents (`--creds`, `METAKV_CREDS`, or [`DEFAULT_CREDS`]), or
/// insecure with a warning.
pub fn security(
    insecure: bool,
    creds: Option<&std::path::Path>,
    token: Option<String>,
) -> Result<Security, String> {
    if insecure {
        if creds.is_some() {
            return Err("--insecure and --creds exclude each other".into());
        }
        eprintln!("metakv: warning: --insecure: nothing sent or received is encrypted or verified");
        return Ok(Security::Insecure);
    }
    let path = creds.unwrap_or(std::path::Path::new(DEFAULT_CREDS));
    if !path.exists() {
        return Err(format!(
            "no credentials at {}: pass --creds FILE (or METAKV_CREDS), the admin.creds file in \
             the data dir of the cluster's first node; --insecure talks to a node started with \
             --insecure",
            path.display()
        ));
    }
    let creds = metakv::ClientCreds::load(path).map_err(|e| format!("credentials: {e}"))?;
    Ok(Security::Creds(match token {
        Some(token) => creds.with_token(token),
        None => creds,
    }))
}

/// A client of `endpoints` secured as `security` says.
pub fn client(
    security: &Security,
    endpoints: Vec<String>,
    cluster_id: &str,
) -> Result<Client, metakv::Error> {
    match security {
        Security::Insecure => Ok(Client::insecure(endpoints, cluster_id)),
        Security::Creds(creds) => Client::new(endpoints, cluster_id, creds),
    }
}

pub fn run(
    endpoints: Vec<String>,
    cluster_id: String,
    security: Security,
    json: bool,
    cmd: ClientCmd,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(json, Fail(1, e.to_string())),
    };
    let ca_pem = match &security {
        Security::Creds(creds) => Some(creds.ca_pem.as_str()),
        Security::Insecure => None,
    };
    let client = match client(&security, endpoints, &cluster_id) {
        Ok(c) => c,
        Err(e) => return fail(json, Fail(2, e.to_string())),
    };
    match runtime.block_on(command(&client, ca_pem, json, cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(json, f),
    }
}

/// What kind of failure an exit code stands for, as `--json` names it.
fn kind_of(code: u8) -> &'static str {
    match code {
        2 => "usage",
        3 => "not_found",
        4 => "expectation_failed",
        5 => "bucket_paused",
        6 => "not_authorised",
        7 => "outcome_unknown",
        8 => "exists",
        _ => "failed",
    }
}

/// Reports a failure: one line on stderr, or with `--json` one object on stderr
/// (`{"error":{"kind","code","message"}}`); the exit code is the same either way.
fn fail(json: bool, Fail(code, message): Fail) -> ExitCode {
    if json {
        eprintln!(
            "{}",
            json!({"error": {"kind": kind_of(code), "code": code, "message": message}})
        );
    } else {
        eprintln!("metakv: {message}");
    }
    ExitCode::from(code)
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

async fn command(
    client: &Client,
    ca_pem: Option<&str>,
    json: bool,
    cmd: ClientCmd,
) -> Result<(), Fail> {
    if let ClientCmd::Get { bucket, .. }
    | ClientCmd::Ls { bucket, .. }
    | ClientCmd::Watch { bucket, .. } = &cmd
        && bucket == metakv::store::SYS_BUCKET
    {
        return Err(Fail(
            2,
            format!(
                "bucket {bucket} holds metakv's own records, sealed: see them with `user list`, \
                 `role list`, `cluster members`, `gc status` and `bucket status BUCKET`"
            ),
        ));
    }
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
        ClientCmd::Backup { file, force } => {
            maintenance::backup(client, &file, force, json).await?
        }
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
                outln!("{}", shown(&record.value));
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
        ClientCmd::User(cmd) => crate::access::user_command(client, ca_pem, json, cmd).await?,
        ClientCmd::Role(cmd) => crate::access::role_command(client, json, cmd).await?,
        ClientCmd::Bucket(cmd) => bucket_command(client, json, cmd).await?,
    }
    Ok(())
}

/// A value as a person reads it: its text when it is UTF-8 without control characters (tabs
/// and newlines allowed), else
/// escaped (`\x00`, `\n`), never raw bytes to a terminal. `--json` gives the exact bytes.
fn shown(value: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\t' && c != '\n') =>
        {
            text.into()
        }
        _ => value
            .iter()
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect::<String>()
            .into(),
    }
}

/// `ls`: a bucket's records in key order, a page at a time.
async fn list(
    client: &Client,
    json: bool,
    bucket: &str,
    prefix: &str,
    limit: Option<usize>,
    tombstones: bool,
) -> Result<(), Fail> {
    let mut after = None;
    let mut left = limit.unwrap_or(usize::MAX);
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
                    shown(&r.value)
                );
            }
        }
        left = left.saturating_sub(page.items.len());
        match page.next {
            Some(n) if left == 0 => {
                // Cut by --limit: say so if anything follows (a full page names a next one
                // whether or not there is more), and where the rest begins.
                let rest = client
                    .scan(
                        bucket,
                        prefix.as_bytes(),
                        Some(n.clone()),
                        1,
                        tombstones,
                        Consistency::Linearizable,
                    )
                    .await?;
                if !rest.items.is_empty() {
                    eprintln!(
                        "metakv: listed the first {} records; more follow after {} (a larger --limit, or none, lists them)",
                        limit.unwrap_or_default(),
                        String::from_utf8_lossy(&n)
                    );
                }
                break;
            }
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
    from_rev: Option<u64>,
) -> Result<(), Fail> {
    // From now: after everything the node answering has applied (revisions are log indexes).
    let from_rev = match from_rev {
        Some(n) => n,
        None => client.status().await?.applied + 1,
    };
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
                        shown(&record.value)
                    );
                }
            }
            WatchEvent::Compacted { floor } => {
                return Err(Fail(
                    1,
                    format!(
                        "watch: changes up to revision {floor} were compacted (tombstone GC): \
                         list the bucket (`metakv ls`), then watch from now or from a later \
                         revision"
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
                    let collected: Vec<String> = p
                        .collected
                        .iter()
                        .map(|(node, n)| format!("node {node}: {n}"))
                        .collect();
                    let compacted = match p.compacted.is_empty() {
                        true => "none yet".to_owned(),
                        false => crate::output::id_list(&p.compacted),
                    };
                    progress.note(format!(
                        "GC job {job} {}: collected {}, agreed {}, purged {}, compacted nodes {compacted}",
                        p.phase,
                        if collected.is_empty() { "nothing yet".to_owned() } else { collected.join(", ") },
                        p.agreed,
                        p.purged,
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
                        Ok(s) => json!({"id": s.id, "addr": s.addr, "role": role(s.role), "applied": s.applied, "committed": s.committed, "file_bytes": s.state_file_bytes + s.log_file_bytes, "secure": s.secure}),
                        Err(e) => json!({"id": n.member.id, "addr": n.member.addr, "role": "unreachable", "error": e.to_string()}),
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
                        Ok(s) if !s.secure => outln!(
                            "{}  INSECURE: plain TCP, anyone who reaches it can read and act as a member",
                            status_line(s)
                        ),
                        Ok(s) => outln!("{}", status_line(s)),
                        Err(e) => outln!(
                            "{:>4}  {:<21}  unreachable ({e})",
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
        ClusterCmd::JoinToken {
            revoke: Some(id), ..
        } => {
            client.revoke_join_token(&id).await?;
            if json {
                outln!("{}", json!({"revoked": id}))
            } else {
                outln!("join token {id} revoked")
            }
        }
        ClusterCmd::JoinToken { ttl, revoke: None } => {
            let info = client
                .join_token(std::time::Duration::from_millis(ttl))
                .await?;
            if json {
                outln!(
                    "{}",
                    json!({"token": info.token, "id": info.id, "expires_ms": info.expires_ms})
                )
            } else {
                outln!("{}", info.token);
                eprintln!(
                    "join token {} works once, for {}: metakv serve --id N --join <a member's \
                     address> --token <the token>",
                    info.id,
                    crate::output::duration_ms(ttl)
                );
            }
        }
    }
    Ok(())
}

/// `bucket create`, `drop`, `list`, `status`, `pause`, `resume`.
async fn bucket_command(client: &Client, json: bool, cmd: BucketCmd) -> Result<(), Fail> {
    match cmd {
        BucketCmd::Create { name, if_absent } => {
            let created = match if_absent {
                true => client.create_bucket_if_absent(&name).await?,
                false => client.create_bucket(&name).await.map(|()| true)?,
            };
            match (json, created) {
                (true, _) => outln!("{}", json!({"bucket": name, "created": created})),
                (false, true) => outln!("bucket {name} created"),
                (false, false) => outln!("bucket {name} exists already"),
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
                        "{name:<32} {:<9} {:>18} {:>21}",
                        info.state.as_str(),
                        count(info.records, "record"),
                        count(info.tombstones, "tombstone")
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
                    "{name}: {}, {}, {}, purge floor {}",
                    info.state.as_str(),
                    count(info.records, "record"),
                    count(info.tombstones, "tombstone"),
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
            "{bucket} {done} (op {op}): {}, {} of archive, {}",
            count(manifest.map_or(0, |m| m.records), "record"),
            count(manifest.map_or(0, |m| m.bytes), "byte"),
            record.map_or(String::new(), |r| format!("{}/{}", r.archive, r.objects))
        );
    }
    Ok(())
}
