//! The client commands of `metakv` (put, get, del, ls, watch) and what every command that
//! talks to a cluster shares: its endpoints, credentials, client and runtime. The operator's
//! commands are in `admin`, `access` and `maintenance`; failures and exit codes in `fail`.

use std::io::Read;
use std::process::ExitCode;

use metakv::{Applied, Client, Consistency, Expect, Kv, WatchEvent};
use serde_json::{Value, json};

use crate::admin::{bucket_command, cluster_command, gc_command};
pub use crate::args::{ClientCmd, parse_duration_ms};
use crate::fail::{Fail, fail};
use crate::maintenance;
use crate::output::record_json;

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
