//! `metakv gc`, `metakv cluster` and `metakv bucket`: the operator's commands on a running
//! cluster.

use metakv::{Client, GcOutcome, Kv};
use serde_json::{Value, json};

use crate::args::{BucketCmd, ClusterCmd, GcCmd};
use crate::fail::Fail;
use crate::output::{
    count, hibernation_json, hibernation_line, job_json, print_job, progress_line, role,
    status_line,
};

/// `gc run` and `gc status`.
pub(crate) async fn gc_command(client: &Client, json: bool, cmd: GcCmd) -> Result<(), Fail> {
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
pub(crate) async fn cluster_command(
    client: &Client,
    json: bool,
    cmd: ClusterCmd,
) -> Result<(), Fail> {
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
pub(crate) async fn bucket_command(
    client: &Client,
    json: bool,
    cmd: BucketCmd,
) -> Result<(), Fail> {
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
