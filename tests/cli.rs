//! The `metakv` binary, run as a real process.

use std::process::Command;

fn metakv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metakv"))
}

#[test]
fn demo_runs_and_cleans_up() {
    let out = metakv().args(["demo", "--users", "2000"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "wrote 2000 users",
        "compare-and-set at a stale revision refused",
        "deleted 1800: 200 live records, 1800 tombstones",
        "purged 1800 (guard kept 0); 0 tombstones left",
        "paused: reads answer BucketPaused",
        "resumed: 200 records back",
        "check: 200 records, 0 problems",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let dir = stdout.lines().next().unwrap().rsplit(' ').next().unwrap();
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo left {dir} behind"
    );
}

#[test]
fn unknown_command_is_a_usage_error() {
    let out = metakv().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}
