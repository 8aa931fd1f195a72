//! Commands on a stopped node's files: `check` and `compact --offline`.

use std::path::Path;
use std::process::ExitCode;

use metakv_store::{Config, FileCheck, Store};
use serde_json::json;

fn open(dir: &Path) -> Result<Store, String> {
    let path = dir.join("state.redb");
    if !path.exists() {
        return Err(format!(
            "{} has no state.redb: not a metakv data dir",
            dir.display()
        ));
    }
    Store::open(Config::new(&path)).map_err(|e| format!("opening {}: {e}", path.display()))
}

/// Integrity of a stopped node's store: redb's page checksums, every record's crc, every index.
/// Exit 0 when clean, 1 with every problem listed when not.
pub fn check(dir: &Path, json_out: bool) -> ExitCode {
    let report = match open(dir).and_then(|mut s| s.check().map_err(|e| e.to_string())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("metakv: check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let file = match &report.file {
        FileCheck::Clean => "clean".to_owned(),
        FileCheck::Repaired => "repaired".to_owned(),
        FileCheck::Failed(why) => format!("failed: {why}"),
    };
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    if json_out {
        println!(
            "{}",
            json!({"ok": report.is_ok(), "file": file, "records": report.records_checked, "problems": problems})
        );
    } else {
        println!(
            "{}: {} records checked, file {file}, {} problems",
            dir.display(),
            report.records_checked,
            problems.len()
        );
        for p in &problems {
            println!("  {p}");
        }
    }
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "metakv: check: {} problems in {}",
            problems.len().max(1),
            dir.display()
        );
        ExitCode::FAILURE
    }
}

/// Compacts a stopped node's store and log files; reports bytes before and after each.
pub fn compact(dir: &Path, json_out: bool) -> ExitCode {
    let result = (|| -> Result<Vec<(&'static str, u64, u64)>, String> {
        let mut out = Vec::new();
        let report = open(dir)?.compact().map_err(|e| e.to_string())?;
        out.push(("state.redb", report.bytes_before, report.bytes_after));
        let log = dir.join("raft-log.redb");
        if log.exists() {
            let len = |p: &Path| {
                std::fs::metadata(p)
                    .map(|m| m.len())
                    .map_err(|e| e.to_string())
            };
            let before = len(&log)?;
            let mut db = redb::Database::create(&log)
                .map_err(|e| format!("opening {}: {e}", log.display()))?;
            while db
                .compact()
                .map_err(|e| format!("compacting {}: {e}", log.display()))?
            {}
            drop(db);
            out.push(("raft-log.redb", before, len(&log)?));
        }
        Ok(out)
    })();
    match result {
        Ok(files) => {
            if json_out {
                let files: Vec<_> = files
                    .iter()
                    .map(|(f, b, a)| json!({"file": f, "bytes_before": b, "bytes_after": a}))
                    .collect();
                println!("{}", json!({"files": files}));
            } else {
                for (f, b, a) in files {
                    println!("{f}: {b} -> {a} bytes");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metakv: compact: {e}");
            ExitCode::FAILURE
        }
    }
}
