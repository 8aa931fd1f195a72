//! Bad settings and a closed pipe: `limits.value_bytes_max = 100000000` exited 1 naming
//! neither the file nor the key; `request_timeout = "0"` created the data dir and then
//! failed; `id = 0`, `cluster_id = ""`, `value_bytes_max = 0` and `heartbeat = "0"` were
//! accepted; `metakv ls b | head -c0` panicked (exit 101, a backtrace); `bucket status`
//! printed no final newline; and five commands had no line in `metakv --help`. Every setting
//! is now checked before anything is written (exit 2, one line naming the file and the key),
//! a closed stdout ends a command quietly, and every command says what it does.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::common::serve;

fn metakv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metakv"))
}

#[test]
fn bad_settings_exit_2_naming_the_file_and_the_key_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[limits]\nvalue_bytes_max = 100000000\n",
            "limits.value_bytes_max",
        ),
        ("[limits]\nvalue_bytes_max = 0\n", "limits.value_bytes_max"),
        (
            "[limits]\nrequest_timeout = \"0\"\n",
            "limits.request_timeout",
        ),
        ("id = 0\n", "id"),
        ("cluster_id = \"\"\n", "cluster_id"),
        ("[raft]\nheartbeat = \"0\"\n", "raft.heartbeat"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let data_dir = dir.path().join(format!("data{i}"));
        let out = metakv()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains(key),
            "{text:?}: the error does not name the file and {key}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{text:?}: {stderr}");
        assert!(!data_dir.exists(), "{text:?}: the data dir was created");
    }
}

#[test]
fn every_command_has_a_line_in_help() {
    let out = metakv().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for command in [
        "cluster", "gc", "bucket", "get", "del", "put", "ls", "watch", "serve",
    ] {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(command))
            .unwrap_or_else(|| panic!("no line for {command} in:\n{help}"));
        assert!(
            line.split_whitespace().count() > 1,
            "{command} has no description: {line:?}"
        );
    }
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_and_output_ends_with_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let node = serve(dir.path(), 1, "127.0.0.1:0", None);
    let run = |args: &[&str]| {
        metakv()
            .env("METAKV_CREDS", crate::common::creds_path(dir.path()))
            .args(["--endpoint", &node.addr])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["bucket", "create", "b"]).status.success());
    for i in 0..300 {
        let key = format!("key-{i:04}");
        assert!(run(&["put", "b", &key, "some value"]).status.success());
    }
    let status = run(&["bucket", "status", "b"]);
    assert!(status.status.success());
    assert!(
        status.stdout.ends_with(b"\n"),
        "bucket status ends without a newline: {:?}",
        String::from_utf8_lossy(&status.stdout)
    );
    // `metakv ls b | head -c0`: the reader is gone before the command writes.
    let mut child = metakv()
        .args(["--endpoint", &node.addr, "ls", "b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap();
    assert!(
        !stderr.contains("panicked") && code.code() != Some(101),
        "ls into a closed pipe: {code:?} {stderr}"
    );
}
