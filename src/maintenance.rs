//! `check`, `compact`, `backup` and `restore`: on live nodes through the client API, or on a
//! stopped (or new) node's files.

use crate::output::count;
use std::path::Path;

use metakv::{Client, Kv, NodeCheck, Role};
use metakv_raft::restore::{LOG_FILE, STATE_FILE};
use metakv_raft::{LogCheck, check_log_file};
use metakv_store::{Config, Store};
use serde_json::json;

use crate::fail::Fail;

fn open(dir: &Path) -> Result<Store, Fail> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Err(Fail(
            1,
            format!("{} has no state.redb: not a metakv data dir", dir.display()),
        ));
    }
    Store::open(Config::new(&path)).map_err(|e| Fail(1, format!("opening {}: {e}", path.display())))
}

/// Prints a check's findings (with the node's id when it was a live node); a failure (exit 1)
/// when anything is wrong.
fn report_check(what: &str, check: &NodeCheck, live: bool, json_out: bool) -> Result<(), Fail> {
    if print_check(what, check, live, json_out, None) {
        Ok(())
    } else {
        Err(Fail(
            1,
            format!("check: {} problems in {what}", check.problems.len().max(1)),
        ))
    }
}

/// Prints the state file's findings, and the log's when there are some; true when the state
/// file passed.
fn print_check(
    what: &str,
    check: &NodeCheck,
    live: bool,
    json_out: bool,
    log: Option<&LogCheck>,
) -> bool {
    let index = |l: Option<metakv_raft::types::LogId>| l.map(|l| l.index);
    if json_out {
        let mut out = json!({"ok": check.ok, "file": check.file, "records": check.records,
                             "problems": check.problems});
        if live {
            out["node"] = json!(check.node);
        }
        if let Some(l) = log {
            out["ok"] = json!(check.ok && l.problems.is_empty());
            out["log"] = json!({"entries": l.entries, "first": index(l.first),
                                "last": index(l.last), "last_purged": index(l.last_purged),
                                "committed": index(l.committed), "problems": l.problems});
        }
        outln!("{out}");
    } else {
        outln!(
            "{what}: {} checked, file {}, {}",
            count(check.records, "record"),
            check.file,
            count(check.problems.len() as u64, "problem")
        );
        for p in &check.problems {
            outln!("  {p}");
        }
        if let Some(l) = log {
            let show = |i: Option<u64>| i.map_or("-".to_owned(), |i| i.to_string());
            outln!(
                "raft log: {} entries ({}..={}), purged to {}, committed {}, {} problems",
                l.entries,
                show(index(l.first)),
                show(index(l.last)),
                show(index(l.last_purged)),
                show(index(l.committed)),
                l.problems.len()
            );
            for p in &l.problems {
                outln!("  {p}");
            }
        }
    }
    check.ok
}

/// Integrity of a stopped node's files, neither of them created or changed: the state file
/// (redb's page checksums, every record's crc, every index), the Raft log (every entry's crc
/// and sequence, the vote, the commit and purge points), and the state against the log.
pub fn check_offline(dir: &Path, json_out: bool) -> Result<(), Fail> {
    let (state_path, log_path) = (dir.join(STATE_FILE), dir.join(LOG_FILE));
    if !state_path.exists() && !log_path.exists() {
        return Err(Fail(
            1,
            format!(
                "{} has neither {STATE_FILE} nor {LOG_FILE}: not a metakv data dir",
                dir.display()
            ),
        ));
    }
    let unusable = match std::fs::metadata(&state_path) {
        Err(_) => Some(format!("{STATE_FILE} is missing")),
        Ok(m) if m.len() == 0 => Some(format!("{STATE_FILE} is empty (0 bytes)")),
        Ok(_) => None,
    };
    let (state, store) = match unusable {
        Some(why) => (
            NodeCheck {
                node: 0,
                ok: false,
                file: format!("failed: {why}"),
                records: 0,
                problems: vec![why],
            },
            None,
        ),
        None => {
            let mut store = open(dir)?;
            let report = store.check().map_err(|e| Fail(1, format!("check: {e}")))?;
            (NodeCheck::from_report(0, &report), Some(store))
        }
    };
    let view = store
        .as_ref()
        .map(|s| s.read())
        .transpose()
        .map_err(|e| Fail(1, format!("check: reading the state: {e}")))?;
    let log = check_log_file(&log_path, view.as_ref())
        .map_err(|e| Fail(1, format!("check: {}: {e}", log_path.display())))?;
    let what = dir.display().to_string();
    let state_ok = print_check(&what, &state, false, json_out, Some(&log));
    if state_ok && log.problems.is_empty() {
        Ok(())
    } else {
        Err(Fail(
            1,
            format!(
                "check: {} problems in {what}",
                (state.problems.len() + log.problems.len()).max(1)
            ),
        ))
    }
}

/// The same check on the node the client reaches, while it runs: its requests wait meanwhile.
pub async fn check_live(client: &Client, json_out: bool) -> Result<(), Fail> {
    let check = client.check_node().await?;
    report_check(&format!("node {}", check.node), &check, true, json_out)
}

/// Compacts a stopped node's store and log files; reports bytes before and after each.
pub fn compact_offline(dir: &Path, json_out: bool) -> Result<(), Fail> {
    let fail = |e: String| Fail(1, format!("compact: {e}"));
    let mut files = Vec::new();
    let report = open(dir)?.compact().map_err(|e| fail(e.to_string()))?;
    files.push((STATE_FILE, report.bytes_before, report.bytes_after));
    let log = dir.join(LOG_FILE);
    if log.exists() {
        let len = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| fail(e.to_string()))
        };
        let before = len(&log)?;
        let mut db = redb::Database::create(&log)
            .map_err(|e| fail(format!("opening {}: {e}", log.display())))?;
        while db
            .compact()
            .map_err(|e| fail(format!("compacting {}: {e}", log.display())))?
        {}
        drop(db);
        files.push((LOG_FILE, before, len(&log)?));
    }
    if json_out {
        let files: Vec<_> = files
            .iter()
            .map(|(f, b, a)| json!({"file": f, "bytes_before": b, "bytes_after": a}))
            .collect();
        outln!("{}", json!({"files": files}));
    } else {
        for (f, b, a) in files {
            outln!("{f}: {b} -> {a} bytes");
        }
    }
    Ok(())
}

/// Compacts live nodes one at a time: `only` that one, or every member, followers first and
/// the leader last. Each node's requests wait while its own file is rebuilt; the others serve.
pub async fn compact_live(client: &Client, only: Option<u64>, json_out: bool) -> Result<(), Fail> {
    let status = client.cluster_status().await?;
    let mut targets: Vec<(bool, u64, String)> = status
        .nodes
        .iter()
        .map(|r| {
            let leader = r.status.as_ref().is_ok_and(|s| s.role == Role::Leader);
            (leader, r.member.id, r.member.addr.clone())
        })
        .filter(|(_, id, _)| only.is_none_or(|o| o == *id))
        .collect();
    if let Some(id) = only
        && targets.is_empty()
    {
        return Err(Fail(3, format!("compact: node {id} is not a member")));
    }
    targets.sort();
    let progress = crate::progress::Progress::bar(targets.len() as u64, "nodes");
    let mut nodes = Vec::new();
    for (_, id, addr) in targets {
        progress.note(format!("compacting node {id} ({addr})"));
        let c = client
            .via(&addr)
            .compact_node()
            .await
            .map_err(|e| Fail::from(e).doing(&format!("compact: node {id} ({addr})")))?;
        progress.inc(1);
        if !json_out {
            outln!(
                "node {}: {} KiB -> {} KiB",
                c.node,
                c.bytes_before / 1024,
                c.bytes_after / 1024
            );
        }
        nodes.push(
            json!({"id": c.node, "bytes_before": c.bytes_before, "bytes_after": c.bytes_after}),
        );
    }
    progress.finish();
    if json_out {
        outln!("{}", json!({ "nodes": nodes }));
    }
    Ok(())
}

/// Pulls a backup of the whole store into `file`, with its progress on stderr.
pub async fn backup(client: &Client, file: &Path, force: bool, json_out: bool) -> Result<(), Fail> {
    if !force && file.symlink_metadata().is_ok() {
        return Err(Fail(
            8,
            format!(
                "backup: {} exists; pass --force to replace it, or name another file",
                file.display()
            ),
        ));
    }
    let progress = std::cell::OnceCell::new();
    let info = client
        .backup(file, |done, len| {
            progress
                .get_or_init(|| crate::progress::Progress::bytes(len))
                .bytes_at("backup", done, len)
        })
        .await
        .map_err(|e| Fail::from(e).doing("backup"))?;
    if let Some(p) = progress.get() {
        p.finish();
    }
    if json_out {
        outln!(
            "{}",
            json!({"file": file, "node": info.node, "rev": info.rev, "log_index": info.applied,
                   "buckets": info.buckets, "records": info.records, "bytes": info.bytes,
                   "crc32": format!("{:08x}", info.crc32)})
        );
    } else {
        outln!(
            "backup of {}, {} (revision {}, log index {}) from node {}: {} ({} bytes, crc {:08x})",
            count(info.buckets, "bucket"),
            count(info.records, "record"),
            info.rev,
            info.applied,
            info.node,
            file.display(),
            info.bytes,
            info.crc32
        );
    }
    Ok(())
}

/// A reader that shows how much of a file has been read.
struct Reading<'a, R> {
    input: R,
    done: u64,
    len: u64,
    progress: &'a crate::progress::Progress,
}

impl<R: std::io::Read> std::io::Read for Reading<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.done += n as u64;
        self.progress.bytes_at("restore", self.done, self.len);
        Ok(n)
    }
}

/// Makes node `id`'s data dir from backup `file`, offline.
pub fn restore(
    file: &Path,
    dir: &Path,
    id: u64,
    advertise: &str,
    json_out: bool,
) -> Result<(), Fail> {
    let fail = |e: String| Fail(1, format!("restore: {e}"));
    let input = std::fs::File::open(file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let len = input
        .metadata()
        .map_err(|e| fail(format!("{}: {e}", file.display())))?
        .len();
    let progress = crate::progress::Progress::bytes(len);
    let reading = Reading {
        input: std::io::BufReader::new(input),
        done: 0,
        len,
        progress: &progress,
    };
    let restored =
        metakv_raft::restore::restore_node(dir, reading, id, advertise).map_err(|e| {
            Fail(
                match e.kind() {
                    std::io::ErrorKind::AlreadyExists => 8,
                    _ => 1,
                },
                format!(
                    "{e} (backup {}, data dir {})",
                    file.display(),
                    dir.display()
                ),
            )
        })?;
    progress.finish();
    let start = restored.start.map_or(0, |l| l.index);
    if json_out {
        outln!(
            "{}",
            json!({"data_dir": dir, "node": id, "rev": restored.rev, "log_index": start,
                   "buckets": restored.buckets, "records": restored.records})
        );
    } else {
        outln!(
            "restored {}, {} (revision {}) into {} as node {id}; its log starts \
             after index {start}. Start it with `metakv serve --id {id} --data-dir {}`, then \
             add nodes with `serve --join`.",
            count(restored.buckets, "bucket"),
            count(restored.records, "record"),
            restored.rev,
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}
