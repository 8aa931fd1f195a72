//! The `metakv` binary, run as a real process.

mod common;

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
        "cluster: 3 nodes on 127.0.0.1",
        "wrote 2000 users and deleted 1800 through node",
        "every node holds 200 live records and 1800 tombstones",
        "leads now and serves all 200 records",
        "wrote 2000 users",
        "compare-and-set at a stale revision refused",
        "deleted 1800: 200 live records, 1800 tombstones",
        "purged 1800 (guard kept 0); 0 tombstones left",
        "paused bucket users (op",
        "resumed it: every node holds its 200 records again, revisions unchanged",
        "archive: exported 200 records in 1 chunk (",
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

/// Runs the CLI against `addr`; returns exit code, stdout, stderr.
fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    // The admin credentials of the node's cluster, as `METAKV_CREDS` would give them.
    cli_with(common::creds_for(addr), addr, args)
}

/// Runs the CLI against `addr`, which must succeed; returns its output.
fn cli_ok(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = cli(addr, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Runs the CLI against `addr` with the credentials file `creds`.
fn cli_with(creds: Option<std::path::PathBuf>, addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = metakv();
    if let Some(creds) = creds {
        cmd.env("METAKV_CREDS", creds);
    }
    let out = cmd.arg("--endpoint").arg(addr).args(args).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// `bucket status --json`: (state, records, tombstones), and the whole object.
fn bucket_counts(addr: &str, bucket: &str) -> ((String, u64, u64), serde_json::Value) {
    let (code, out, err) = cli(addr, &["--json", "bucket", "status", bucket]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let counts = (
        s["state"].as_str().unwrap_or_default().to_owned(),
        s["records"].as_u64().unwrap(),
        s["tombstones"].as_u64().unwrap(),
    );
    (counts, s)
}

#[test]
fn client_commands_against_a_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();

    assert_eq!(cli(addr, &["bucket", "create", "users"]).0, 0);
    let (code, out, _) = cli(
        addr,
        &["--json", "put", "users", "ada", "admin", "--if-absent"],
    );
    assert_eq!(code, 0);
    let rev = json(&out)["rev"].as_u64().unwrap();
    let (code, out, _) = cli(addr, &["--json", "get", "users", "ada"]);
    assert_eq!(code, 0);
    let got = json(&out);
    assert_eq!(
        (
            got["bucket"].as_str(),
            got["key"].as_str(),
            got["value"].as_str()
        ),
        (Some("users"), Some("ada"), Some("admin"))
    );
    assert_eq!(
        (
            got["rev"].as_u64(),
            got["create_rev"].as_u64(),
            got["version"].as_u64()
        ),
        (Some(rev), Some(rev), Some(1))
    );
    assert_eq!(
        cli(addr, &["get", "users", "ada"]).1,
        "admin\n",
        "plain get prints the value and ends its line"
    );

    // Expectations: exit code 4, one line on stderr.
    let (code, _, err) = cli(addr, &["put", "users", "ada", "x", "--if-absent"]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, _) = cli(
        addr,
        &["del", "users", "ada", "--if-rev", &(rev + 100).to_string()],
    );
    assert_eq!(code, 4);
    // Not found: 3, for a key and for a bucket.
    assert_eq!(cli(addr, &["get", "users", "nobody"]).0, 3);
    assert_eq!(cli(addr, &["get", "nobucket", "k"]).0, 3);
    assert_eq!(cli(addr, &["del", "users", "nobody"]).0, 3);

    // A value from a file with invalid UTF-8 comes back as value_base64; ls with tombstones.
    let file = dir.path().join("blob");
    std::fs::write(&file, [0xff, 0x00, 0x01]).unwrap();
    assert_eq!(
        cli(
            addr,
            &["put", "users", "blob", "--file", file.to_str().unwrap()]
        )
        .0,
        0
    );
    let (code, out, _) = cli(addr, &["--json", "del", "users", "ada"]);
    assert_eq!(code, 0);
    assert!(json(&out)["rev"].as_u64().unwrap() > rev);
    let (code, out, _) = cli(addr, &["--json", "ls", "users", "--tombstones"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["key"].as_str(), lines[0]["deleted"].as_bool()),
        (Some("ada"), Some(true))
    );
    assert_eq!(
        (lines[1]["key"].as_str(), lines[1]["value_base64"].as_str()),
        (Some("blob"), Some("/wAB"))
    );
    assert_eq!(cli(addr, &["--json", "ls", "users"]).1.lines().count(), 1);

    assert_eq!(bucket_counts(addr, "users").0, ("active".to_owned(), 1, 1));
    let (code, out, _) = cli(addr, &["--json", "cluster", "status"]);
    assert_eq!(code, 0);
    let s = json(&out);
    assert_eq!(s["leader"].as_u64(), Some(1));
    assert_eq!(s["nodes"][0]["role"].as_str(), Some("leader"));
    assert!(s["nodes"][0]["file_bytes"].as_u64().unwrap() > 0);

    // Bad input: an oversized value, a bad bucket name, an unreachable endpoint.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let (code, _, err) = cli(
        addr,
        &["put", "users", "big", "--file", big.to_str().unwrap()],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("over the limit") && err.lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = cli(addr, &["bucket", "create", "Bad Name"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid bucket name"), "{err}");
    let (code, _, err) = cli_with(
        common::creds_for(addr),
        "127.0.0.1:1",
        &["get", "users", "ada"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn check_and_offline_compaction_of_a_stopped_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.clone();
    assert_eq!(cli(&addr, &["bucket", "create", "users"]).0, 0);
    let marker = "MARKER-value-easy-to-find-in-the-file";
    assert_eq!(cli(&addr, &["put", "users", "ada", marker]).0, 0);
    for i in 0..50 {
        assert_eq!(
            cli(
                &addr,
                &["put", "users", &format!("u{i}"), &"x".repeat(2000)]
            )
            .0,
            0
        );
        assert_eq!(cli(&addr, &["del", "users", &format!("u{i}")]).0, 0);
    }
    // SIGTERM: the node stops cleanly and syncs its store.
    Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status()
        .unwrap();
    assert!(node.child.wait().unwrap().success());
    let data = dir.path().join("node1");
    let data = data.to_str().unwrap();

    let out = metakv()
        .args(["--json", "check", "--data-dir", data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["ok"].as_bool(), report["file"].as_str()),
        (Some(true), Some("clean"))
    );

    let out = metakv()
        .args(["--json", "compact", "--offline", "--data-dir", data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = &report["files"][0];
    assert_eq!(state["file"].as_str(), Some("state.redb"));
    assert!(
        state["bytes_after"].as_u64() <= state["bytes_before"].as_u64(),
        "{report}"
    );

    // One flipped byte inside a record's value: check names the record and exits 1.
    let path = dir.path().join("node1/state.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the value is in the file");
    bytes[at + 5] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = metakv()
        .args(["check", "--data-dir", data])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("record users/\"ada\""), "{stdout}");
    let out = metakv()
        .args(["check", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a metakv data dir"));
}

#[test]
fn gc_commands_against_a_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
    assert_eq!(cli(addr, &["bucket", "create", "users"]).0, 0);
    for key in ["ada", "bob", "cy"] {
        assert_eq!(cli(addr, &["put", "users", key, "x"]).0, 0);
    }
    for key in ["ada", "bob"] {
        assert_eq!(cli(addr, &["del", "users", key]).0, 0);
    }
    let (code, _, err) = cli(addr, &["gc", "status"]);
    assert_eq!(code, 0, "{err}");

    // The default minimum age (10 minutes) keeps these fresh tombstones.
    let (code, out, err) = cli(addr, &["gc", "run", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("agreed 0  purged 0"), "{out}");
    let (code, out, err) = cli(addr, &["gc", "run", "--dry-run", "--min-age", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(dry run)  succeeded") && out.contains("agreed 2  purged 0"),
        "{out}"
    );
    assert!(out.contains("would purge users/ada"), "{out}");
    let (code, out, err) = cli(addr, &["--json", "gc", "run", "--min-age", "0"]);
    assert_eq!(code, 0, "{err}");
    let record = json(&out);
    assert_eq!(record["purged"], 2);
    assert_eq!(record["outcome"], "succeeded");
    assert_eq!(record["nodes"][0]["id"], 1);
    assert_eq!(record["nodes"][0]["collected"], 2);
    assert!(
        record["nodes"][0]["bytes_after"].as_u64().unwrap()
            <= record["nodes"][0]["bytes_before"].as_u64().unwrap(),
        "{record}"
    );
    assert!(err.contains("started"), "{err}");
    let (code, out, _) = cli(addr, &["--json", "gc", "status", "--limit", "2"]);
    assert_eq!(code, 0);
    let status = json(&out);
    assert_eq!(status["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(status["jobs"][0]["purged"], 2);
    let (code, out, _) = cli(addr, &["--json", "ls", "users", "--tombstones"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");

    let (code, _, err) = cli(addr, &["gc", "run", "--min-age", "5x"]);
    assert_eq!(code, 2);
    assert!(err.contains("duration needs a unit"), "{err}");
}

/// `compact` and `check` against live nodes: every node rebuilt in turn (followers first) and
/// smaller after its values became tombstones, one node alone with `--node`, an unknown node
/// refused, the endpoint's own store checked clean, and the data still served.
#[test]
fn live_compaction_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let seed = first.addr.clone();
    let _others: Vec<_> = (2..=3)
        .map(|id| common::serve(dir.path(), id, "127.0.0.1:0", Some(&seed)))
        .collect();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
    let addr = seed.as_str();
    // Every member known and answering before the compaction walks them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, out, _) = cli(addr, &["--json", "cluster", "status"]);
        if code == 0 && json(&out)["nodes"].as_array().is_some_and(|n| n.len() == 3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 3-node cluster: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(cli(addr, &["bucket", "create", "users"]).0, 0);
    let big = "x".repeat(8000);
    for i in 0..120 {
        assert_eq!(cli(addr, &["put", "users", &format!("u{i:03}"), &big]).0, 0);
    }
    for i in 0..110 {
        assert_eq!(cli(addr, &["del", "users", &format!("u{i:03}")]).0, 0);
    }

    let (code, out, err) = cli(addr, &["--json", "compact"]);
    assert_eq!(code, 0, "{err}");
    let nodes = json(&out)["nodes"].as_array().unwrap().clone();
    let mut ids: Vec<u64> = nodes.iter().map(|n| n["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "{out}");
    for n in &nodes {
        let (before, after) = (
            n["bytes_before"].as_u64().unwrap(),
            n["bytes_after"].as_u64().unwrap(),
        );
        assert!(after < before, "{n}");
    }

    let (code, out, err) = cli(addr, &["--json", "compact", "--node", "2"]);
    assert_eq!(code, 0, "{err}");
    let only = json(&out);
    assert_eq!(only["nodes"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(only["nodes"][0]["id"], 2);

    let (code, _, err) = cli(addr, &["compact", "--node", "9"]);
    assert_eq!(code, 3);
    assert!(err.contains("node 9 is not a member"), "{err}");
    let (code, _, err) = cli(addr, &["compact", "--offline"]);
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = cli(addr, &["--json", "check"]);
    assert_eq!(code, 0, "{err}");
    let check = json(&out);
    assert_eq!(
        (check["ok"].as_bool(), check["node"].as_u64()),
        (Some(true), Some(1)),
        "{out}"
    );
    assert!(check["records"].as_u64().unwrap() >= 120, "{out}");

    let (code, out, _) = cli(addr, &["get", "users", "u119"]);
    assert_eq!(code, 0);
    assert!(out.contains(&big), "{out}");
}

/// `serve --config FILE`: the file sets the node (its listen address, data dir, cluster id and
/// GC settings), a flag overrides it, and a bad file is a usage error naming what is wrong.
#[test]
fn serve_reads_a_config_file_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metakv.toml");
    std::fs::write(
        &config,
        format!(
            "id = 5\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ncluster_id = \"from-file\"\n\n[gc]\nmin_age = \"0\"\ninterval = \"0\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let args = [
        "--config".to_owned(),
        config.display().to_string(),
        "--id".to_owned(),
        "7".to_owned(),
    ];
    let node = common::serve_args(dir.path(), 7, &args);
    let addr = node.addr.as_str();
    let with_id = |args: &[&str]| {
        let out = metakv()
            .env("METAKV_CREDS", dir.path().join("data/admin.creds"))
            .args(["--endpoint", addr, "--cluster-id", "from-file"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = with_id(&["--json", "cluster", "status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["nodes"][0]["id"],
        7
    );
    assert!(dir.path().join("data").join("state.redb").exists());
    // The file's cluster id: a client of the default one does not trust the node.
    let creds = Some(dir.path().join("data/admin.creds"));
    let (code, _, err) = cli_with(creds, addr, &["cluster", "status"]);
    assert_eq!(code, 1);
    assert!(err.contains("no node of cluster \"metakv\""), "{err}");
    // The file's GC minimum age of 0: fresh tombstones are collectable.
    assert_eq!(with_id(&["bucket", "create", "b"]).0, 0);
    assert_eq!(with_id(&["put", "b", "k", "v"]).0, 0);
    assert_eq!(with_id(&["del", "b", "k"]).0, 0);
    let (code, out) = with_id(&["--json", "gc", "run", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["agreed"],
        1
    );

    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[gc]\nintervall = \"1h\"\n",
    )
    .unwrap();
    let out = metakv()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("intervall") && err.contains("metakv.toml"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `bucket pause|resume|status` against a real node process: the archive lands in the
/// directory given, a paused bucket answers exit code 5, and resume brings every record back.
#[test]
fn bucket_pause_resume_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
    assert_eq!(cli(addr, &["bucket", "create", "users"]).0, 0);
    for i in 0..50 {
        assert_eq!(cli(addr, &["put", "users", &format!("u{i}"), "v"]).0, 0);
    }
    assert_eq!(cli(addr, &["del", "users", "u0"]).0, 0);
    let (_, before, _) = cli(addr, &["--json", "get", "users", "u7"]);

    // The archive location is the server's choice: under its archive roots (here the test
    // dir), absolute, with no `..`; a refused pause writes nothing and leaves the bucket.
    let escape = format!(
        "{}/../metakv-escape-{}",
        dir.path().display(),
        std::process::id()
    );
    for (location, says) in [
        ("relative/archive", "relative"),
        (escape.as_str(), ". or .."),
        ("/var/tmp/metakv-not-a-root", "under none"),
        ("file://elsewhere/srv", "only a local"),
    ] {
        let (code, _, err) = cli(addr, &["bucket", "pause", "users", "--archive", location]);
        assert_eq!(code, 2, "{location}: {err}");
        assert!(err.contains(says), "{location}: {err}");
    }
    assert!(!std::path::Path::new("relative").exists());
    assert!(!std::path::Path::new("/var/tmp/metakv-not-a-root").exists());
    assert!(
        !dir.path()
            .join(format!("../metakv-escape-{}", std::process::id()))
            .exists()
    );
    assert_eq!(bucket_counts(addr, "users").0.0, "active");
    let archive = dir.path().join("archive");
    let (code, out, err) = cli(
        addr,
        &[
            "--json",
            "bucket",
            "pause",
            "users",
            "--archive",
            archive.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let paused = json(&out);
    assert_eq!(paused["state"], "paused", "{out}");
    assert_eq!(paused["last"]["manifest"]["records"], 50, "{out}");
    let objects = paused["last"]["objects"].as_str().unwrap();
    assert!(archive.join(objects).join("archive.mkva").exists());
    assert!(archive.join(objects).join("manifest.json").exists());

    let (code, _, err) = cli(addr, &["get", "users", "u7"]);
    assert_eq!(code, 5, "a paused bucket: {err}");
    let (code, _, err) = cli(addr, &["put", "users", "u7", "w"]);
    assert_eq!(code, 5, "{err}");
    let (code, out, _) = cli(addr, &["bucket", "status", "users"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("paused") && out.contains("last pause"),
        "{out}"
    );
    // Pausing a paused bucket is refused with one clear line, exit 5 as for other
    // requests a paused bucket cannot take.
    let (code, _, err) = cli(
        addr,
        &[
            "bucket",
            "pause",
            "users",
            "--archive",
            archive.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 5);
    assert!(err.contains("paused") && err.lines().count() == 1, "{err}");

    let (code, out, err) = cli(addr, &["bucket", "resume", "users"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("users resumed"), "{out}");
    assert_eq!(cli(addr, &["--json", "get", "users", "u7"]).1, before);
    let (counts, status) = bucket_counts(addr, "users");
    assert_eq!(counts, ("active".to_owned(), 49, 1));
    assert_eq!(status["hibernation"]["last"]["phase"], "done");
}

#[test]
fn backup_then_restore_into_a_fresh_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
    let n1 = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let n2 = common::serve(dir.path(), 2, "127.0.0.1:0", Some(&n1.addr));
    let n3 = common::serve(dir.path(), 3, "127.0.0.1:0", Some(&n1.addr));
    assert_eq!(cli(&n2.addr, &["bucket", "create", "users"]).0, 0);
    for i in 0..30 {
        let (code, _, err) = cli(&n2.addr, &["put", "users", &format!("u{i:02}"), "v"]);
        assert_eq!(code, 0, "{err}");
    }
    for i in 0..10 {
        assert_eq!(cli(&n2.addr, &["del", "users", &format!("u{i:02}")]).0, 0);
    }
    let (_, before, _) = cli(&n3.addr, &["--json", "get", "users", "u15"]);
    let (_, listed, _) = cli(&n3.addr, &["--json", "ls", "users", "--tombstones"]);
    assert_eq!(listed.lines().count(), 30);

    // Through a follower; the file appears only once it is whole.
    let file = dir.path().join("users.backup");
    let (code, out, err) = cli(&n3.addr, &["--json", "backup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A file that exists is not overwritten without --force (exit 8, the file unchanged).
    let first = std::fs::read(&file).unwrap();
    let (code, _, err) = cli(&n3.addr, &["backup", file.to_str().unwrap()]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), first);
    let forced = dir.path().join("forced.backup");
    std::fs::write(&forced, b"old").unwrap();
    let (code, _, err) = cli(&n3.addr, &["backup", "--force", forced.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::metadata(&forced).unwrap().len() > 3);
    let info = json(&out);
    assert_eq!(
        info["bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    assert_eq!(info["buckets"], 2, "users and _sys: {out}");
    assert!(info["records"].as_u64().unwrap() >= 30, "{out}");
    let log_index = info["log_index"].as_u64().unwrap();
    assert!(log_index >= info["rev"].as_u64().unwrap(), "{out}");
    drop((n1, n2, n3));

    // A new cluster: node 1 from the backup, 2 and 3 join it.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let data1 = fresh.join("node1");
    let restore = |target: &std::path::Path, backup: &std::path::Path| {
        let out = metakv()
            .args(["--json", "restore"])
            .arg(backup)
            .arg("--data-dir")
            .arg(target)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, out, err) = restore(&data1, &file);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["log_index"].as_u64(), Some(log_index), "{out}");
    assert_eq!(json(&out)["records"], info["records"]);
    // Again into the same dir: refused in one line (it exists), nothing touched.
    let (code, _, err) = restore(&data1, &file);
    assert_eq!(code, 8);
    assert!(
        err.contains("already holds") && err.lines().count() == 1,
        "{err}"
    );
    // A damaged backup: refused, and the dir is left empty.
    let mut bytes = std::fs::read(&file).unwrap();
    let cut = bytes.len() - 3;
    bytes.truncate(cut);
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, _, err) = restore(&fresh.join("damaged"), &damaged);
    assert_eq!(code, 1);
    assert!(
        err.contains("truncated") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !fresh.join("damaged").exists(),
        "a refused restore leaves no data dir behind"
    );
    let (code, _, err) = restore(&fresh.join("other"), &dir.path().join("missing.backup"));
    assert_eq!(code, 1);
    assert!(err.contains("missing.backup"), "{err}");

    let m1 = common::serve(&fresh, 1, "127.0.0.1:0", None);
    let m2 = common::serve(&fresh, 2, "127.0.0.1:0", Some(&m1.addr));
    let m3 = common::serve(&fresh, 3, "127.0.0.1:0", Some(&m1.addr));
    assert_eq!(cli(&m3.addr, &["--json", "get", "users", "u15"]).1, before);
    assert_eq!(
        cli(&m2.addr, &["--json", "ls", "users", "--tombstones"]).1,
        listed
    );
    let (code, out, err) = cli(&m2.addr, &["--json", "put", "users", "new", "v"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        json(&out)["rev"].as_u64().unwrap() > log_index,
        "revisions go on: {out}"
    );
    let (_, out, _) = cli(&m1.addr, &["--json", "cluster", "status"]);
    let status = json(&out);
    let mut addrs: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap())
        .collect();
    addrs.sort();
    let mut want = vec![m1.addr.as_str(), m2.addr.as_str(), m3.addr.as_str()];
    want.sort();
    assert_eq!(addrs, want, "{out}");
}

/// Every file and directory metakv writes is owner-only, also under `umask 000` (it was 0666
/// and 0777 there): a node's data dir with its state, log, identity, snapshots and TLS
/// material (the cluster CA, its certificate, the admin credentials), a backup's file, and a
/// pause's archive in a directory it creates.
#[test]
fn files_are_owner_only_under_umask_000() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[raft]\nsnapshot_logs_since_last = 20\n").unwrap();
    let data = dir.path().join("data");
    let under_umask_000 = |program: &std::path::Path| {
        let mut c = Command::new("sh");
        c.args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(program);
        c
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_metakv"));
    let serve = under_umask_000(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .arg("--archive-root")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed when the test ends, also when an assertion fails first.
    let mut serve = common::Proc {
        child: serve,
        addr: String::new(),
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .split(" listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let run = |args: &[&str]| {
        let out = under_umask_000(bin)
            .env("METAKV_CREDS", data.join("admin.creds"))
            .arg("--endpoint")
            .arg(&addr)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["bucket", "create", "users"]);
    for i in 0..40 {
        run(&["put", "users", &format!("u{i}"), "v"]);
    }
    let backup = dir.path().join("users.backup");
    run(&["backup", backup.to_str().unwrap()]);
    let archive = dir.path().join("archives/new");
    run(&[
        "bucket",
        "pause",
        "users",
        "--archive",
        archive.to_str().unwrap(),
    ]);
    let _ = serve.child.kill();
    let _ = serve.child.wait();

    let mut loose = Vec::new();
    let mut seen = 0;
    let mut check = |p: &std::path::Path| {
        let meta = std::fs::metadata(p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        seen += 1;
        if mode != want {
            loose.push(format!("{} is {mode:o}", p.display()));
        }
    };
    fn walk(p: &std::path::Path, f: &mut dyn FnMut(&std::path::Path)) {
        f(p);
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), f);
            }
        }
    }
    walk(&data, &mut check);
    walk(&backup, &mut check);
    walk(&dir.path().join("archives"), &mut check);
    assert!(
        data.join("snapshots").read_dir().unwrap().count() > 0,
        "no snapshot was built, so none was checked"
    );
    for made in [
        "tls/ca.crt",
        "tls/ca.key",
        "tls/node.crt",
        "tls/node.key",
        "admin.creds",
    ] {
        assert!(
            data.join(made).exists(),
            "a new cluster's first node made no {made}"
        );
    }
    assert!(seen > 8, "only {seen} paths checked");
    assert!(
        loose.is_empty(),
        "not owner-only under umask 000:\n{}",
        loose.join("\n")
    );
}

/// `--endpoint` takes a list, as `Client::new` and etcdctl's `--endpoints` do: the first node
/// that answers serves. A bad item is a usage error (exit 2). With `--json`, a failure is one
/// JSON object on stderr and keeps its exit code.
#[test]
fn endpoint_lists_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let list = format!("{nobody}, {}", node.addr);
    let (code, _, err) = cli(&list, &["bucket", "create", "users"]);
    assert_eq!(code, 0, "through {list}: {err}");
    let out = metakv()
        .env("METAKV_ENDPOINT", &list)
        .env("METAKV_CREDS", common::creds_for(&node.addr).unwrap())
        .args(["put", "users", "ada", "v"])
        .output()
        .unwrap();
    assert!(out.status.success(), "METAKV_ENDPOINT={list}");

    for bad in [
        "",
        ",",
        "localhost",
        "127.0.0.1:notaport",
        ":7379",
        "127.0.0.1:0",
    ] {
        let (code, _, err) = cli(bad, &["get", "users", "ada"]);
        assert_eq!(code, 2, "--endpoint {bad:?}: {err}");
        assert!(err.contains("--endpoint"), "--endpoint {bad:?}: {err}");
    }

    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap();
    for (args, code, kind) in [
        (vec!["--json", "get", "users", "nobody"], 3, "not_found"),
        (vec!["--json", "get", "nothing", "k"], 3, "not_found"),
        (
            vec!["--json", "put", "users", "ada", "w", "--if-rev", "1"],
            4,
            "expectation_failed",
        ),
    ] {
        let (got, out, err) = cli(&node.addr, &args);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out:?} on stdout");
        let e = json(&err);
        assert_eq!(e["error"]["kind"], kind, "{args:?}: {err}");
        assert_eq!(e["error"]["code"], code, "{args:?}: {err}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (code, _, err) = cli("nowhere", &["--json", "get", "users", "ada"]);
    assert_eq!(
        (code, json(&err)["error"]["kind"].as_str()),
        (2, Some("usage"))
    );
}

/// `ls` stopped at 1,000 records without a word. It lists every record by default (a page at
/// a time), and `--limit N` says on stderr when more follow.
#[test]
fn ls_lists_everything_and_says_when_a_limit_cut_it() {
    use metakv::Kv;
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = common::client(dir.path(), vec![node.addr.clone()]);
        client.create_bucket("many").await.unwrap();
        let client = &client;
        // 50 at a time: the log commits them in groups, and the client's connections stay
        // under the node's limit.
        for chunk in (0..1_500).collect::<Vec<u32>>().chunks(50) {
            let puts = chunk.iter().map(|i| async move {
                client
                    .put(
                        "many",
                        format!("k{i:05}").as_bytes(),
                        b"v",
                        metakv::Expect::Any,
                    )
                    .await
            });
            for r in futures_util::future::join_all(puts).await {
                r.unwrap();
            }
        }
    });
    let (code, out, err) = cli(&node.addr, &["ls", "many"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().count(),
        1_500,
        "ls listed {} records",
        out.lines().count()
    );
    assert!(err.is_empty(), "{err}");
    let (code, out, err) = cli(&node.addr, &["ls", "many", "--limit", "10"]);
    assert_eq!((code, out.lines().count()), (0, 10), "{err}");
    assert!(err.contains("more follow after k00009"), "{err}");
    let (_, out, err) = cli(&node.addr, &["ls", "many", "--limit", "1500"]);
    assert_eq!(out.lines().count(), 1_500);
    assert!(err.is_empty(), "nothing follows, yet: {err}");
}

/// `--insecure` is the explicit opt-out: the node serves plain TCP and says so at start and in
/// `cluster status`; a command talks to it with `--insecure` (and warns), and one without
/// credentials is told where they would be. A data dir such a node wrote has no certificate:
/// served without `--insecure`, it is refused with what to do, and nothing changes.
#[test]
fn insecure_is_explicit_and_a_dir_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1");
    let mut node = common::serve_args(
        dir.path(),
        1,
        &[
            "--insecure".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ],
    );
    let addr = node.addr.clone();
    assert!(!data.join("tls").exists() && !data.join("admin.creds").exists());
    let log = std::fs::read_to_string(dir.path().join("node1.log")).unwrap();
    assert!(log.contains("INSECURE"), "{log}");
    let insecure = |args: &[&str]| {
        let out = metakv()
            .args(["--insecure", "--endpoint", &addr])
            .args(args)
            .output()
            .unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (
            out.status.code().unwrap(),
            text(out.stdout),
            text(out.stderr),
        )
    };
    let (code, _, err) = insecure(&["bucket", "create", "users"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--insecure: nothing sent or received is encrypted"),
        "{err}"
    );
    let (code, out, _) = insecure(&["cluster", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("INSECURE"), "{out}");
    // Without --insecure and without credentials: a usage error saying where they would be.
    let out = metakv()
        .current_dir(dir.path())
        .args(["--endpoint", &addr, "get", "users", "ada"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("metakv-data/admin.creds") && err.contains("--creds"),
        "{err}"
    );

    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let out = metakv()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ran without TLS") && err.contains("--insecure"),
        "{err}"
    );
    assert!(
        !data.join("tls").exists(),
        "the refused start made TLS material"
    );
}

/// `user` and `role` from the command line: a user's token is printed once and written with
/// the CA into a credentials file of its own (0600); a command with it acts for that user, and
/// a denied one exits 6 naming the user, the operation and the bucket (`--json`:
/// `not_authorised`). `--token` overrides the file's credential and keeps its CA.
#[test]
fn users_and_roles_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let ok = |args: &[&str]| cli_ok(addr, args);
    ok(&["bucket", "create", "users"]);
    ok(&["bucket", "create", "config"]);
    ok(&["role", "add", "reader", "--read", "users"]);
    let (code, _, err) = cli(addr, &["role", "add", "empty"]);
    assert_eq!(code, 2, "{err}");
    let ada_creds = dir.path().join("ada.creds");
    let out = ok(&[
        "--json",
        "user",
        "add",
        "ada",
        "--role",
        "reader",
        "--creds-out",
        ada_creds.to_str().unwrap(),
    ]);
    let added: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(added["user"], "ada");
    let token = added["token"].as_str().unwrap().to_owned();
    let mode = std::fs::metadata(&ada_creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(ok(&["user", "list"]).contains("ada"));
    assert!(ok(&["role", "list"]).contains("read users"));
    ok(&["put", "users", "ada", "v"]);

    let as_ada = |args: &[&str]| cli_with(Some(ada_creds.clone()), addr, args);
    let (code, out, err) = as_ada(&["get", "users", "ada"]);
    assert_eq!((code, out.trim()), (0, "v"), "{err}");
    let (code, _, err) = as_ada(&["put", "users", "ada", "w"]);
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("not authorised") && err.contains("\"ada\"") && err.contains("\"users\""),
        "{err}"
    );
    let (code, _, err) = as_ada(&["--json", "bucket", "create", "mine"]);
    assert_eq!(code, 6, "{err}");
    let e: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(e["error"]["kind"], "not_authorised");
    // --token with the admin's file: the token names the user.
    let (code, _, err) = cli(addr, &["--token", &token, "bucket", "drop", "config"]);
    assert_eq!(code, 6, "{err}");
    // A new token with --revoke-all: the old one stops working.
    ok(&["user", "token", "ada", "--revoke-all"]);
    let (code, _, err) = as_ada(&["get", "users", "ada"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("unknown, revoked"), "{err}");
    ok(&["user", "remove", "ada"]);
    assert!(!ok(&["user", "list"]).contains("ada"));
    // The token's secret is in no log and no backup (the cluster keeps its hash only).
    let backup = dir.path().join("all.backup");
    ok(&["backup", backup.to_str().unwrap()]);
    let secret = token.rsplit('.').next().unwrap().as_bytes();
    for file in [backup, dir.path().join("node1.log")] {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.is_empty(), "{}", file.display());
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{} holds the token's secret",
            file.display()
        );
    }
}

/// `watch` follows changes from now by default (as etcdctl's does), so it works after GC has
/// purged history; `--from-rev N` asks for history and says when it is gone.
#[test]
fn watch_starts_from_now_and_history_says_when_it_was_purged() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let ok = |args: &[&str]| cli_ok(addr, args);
    ok(&["bucket", "create", "users"]);
    ok(&["put", "users", "old", "1"]);
    ok(&["del", "users", "old"]);
    ok(&["gc", "run", "--min-age", "0"]);
    let (code, _, err) = cli(addr, &["watch", "users", "--from-rev", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("compacted"), "{err}");

    let mut watcher = metakv()
        .env("METAKV_CREDS", common::creds_for(addr).unwrap())
        .args(["--endpoint", addr, "watch", "users"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let watcher = common::Proc {
        child: watcher,
        addr: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Writes until the watcher reports one: it may start after the first.
    let mut seen = None;
    for i in 0..50 {
        ok(&["put", "users", &format!("new{i}"), "v"]);
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    let line = seen.expect("the watch reported no change");
    assert!(line.contains(" put new") && !line.contains("old"), "{line}");
    drop(watcher);
}

/// Human output is for people: `get` ends its line, and a value that is not text (or would
/// steer a terminal) is shown escaped, never as raw bytes; `--json` keeps the exact bytes.
#[test]
fn values_that_are_not_text_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    assert_eq!(cli(addr, &["bucket", "create", "b"]).0, 0);
    let raw = dir.path().join("raw");
    std::fs::write(&raw, b"\x1b[31mred\x00\xff").unwrap();
    let (code, _, err) = cli(addr, &["put", "b", "bin", "--file", raw.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cli(addr, &["put", "b", "text", "hello"]).0, 0);
    let (_, out, _) = cli(addr, &["get", "b", "text"]);
    assert_eq!(out, "hello\n");
    let (_, out, _) = cli(addr, &["get", "b", "bin"]);
    assert_eq!(out, "\\x1b[31mred\\x00\\xff\n");
    let (_, out, _) = cli(addr, &["ls", "b"]);
    assert!(
        out.contains("\\x1b[31mred") && !out.contains('\u{1b}'),
        "{out}"
    );
    let (_, out, _) = cli(addr, &["--json", "get", "b", "bin"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The exact bytes, as base64 (they are not UTF-8): "\x1b[31mred\x00\xff".
    assert_eq!(v["value_base64"], "G1szMW1yZWQA/w==", "{out}");
}

/// `metakv demo | head -1` ended the demo at its second line, and its temporary directory
/// stayed behind (the exit on a closed standard output runs no destructors). It is removed.
#[test]
fn a_demo_whose_reader_goes_away_leaves_no_directory() {
    use std::io::BufRead;
    let mut demo = metakv()
        .args(["demo", "--users", "200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(demo.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone: the pipe closed when the BufReader was dropped.
    let status = demo.wait().unwrap();
    assert!(status.success(), "{status}");
    let dir = first.trim().rsplit(' ').next().unwrap();
    assert!(
        dir.starts_with("/") && dir.contains("metakv-demo-"),
        "{first}"
    );
    assert!(
        !std::path::Path::new(dir).exists(),
        "the demo left {dir} behind"
    );
}

/// A TCP proxy to `target` that cuts a connection once the client has sent its first record
/// after the node's second flight (the TLS handshake, then the hello's welcome): the request
/// reaches the node, and its answer never reaches the client.
fn cutting_proxy(target: String) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let flights = Arc::new(AtomicU32::new(0));
            let client_spoke = Arc::new(AtomicBool::new(false));
            let cut = Arc::new(AtomicBool::new(false));
            // Node to client: counts the node's flights (data after the client spoke), and
            // passes nothing on once the request is through.
            let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            let (f, spoke, c) = (
                Arc::clone(&flights),
                Arc::clone(&client_spoke),
                Arc::clone(&cut),
            );
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    if spoke.swap(false, Ordering::SeqCst) {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    if c.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            // Client to node, a TLS record at a time.
            let (mut from, mut to) = (client, server);
            std::thread::spawn(move || {
                loop {
                    let mut header = [0u8; 5];
                    if from.read_exact(&mut header).is_err() {
                        break;
                    }
                    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
                    let mut body = vec![0u8; len];
                    if from.read_exact(&mut body).is_err() {
                        break;
                    }
                    let request = flights.load(Ordering::SeqCst) >= 2;
                    cut.store(request, Ordering::SeqCst);
                    client_spoke.store(true, Ordering::SeqCst);
                    if to.write_all(&header).is_err() || to.write_all(&body).is_err() {
                        break;
                    }
                    if request {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        from.shutdown(Shutdown::Both).ok();
                        to.shutdown(Shutdown::Both).ok();
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// The README's table of exit codes, row by row: each example runs against a real node set up
/// for it, and exits with its row's code. Every code has exactly one row.
#[test]
fn exit_codes_follow_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("| Code | Meaning | For example |")
        .nth(1)
        .expect("the README's exit code table");
    let rows: Vec<(i32, String)> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let example = cells[3].split('`').nth(1).expect("an example in backticks");
            (cells[1].parse().unwrap(), example.to_owned())
        })
        .collect();
    let codes: Vec<i32> = rows.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        (0..=8).collect::<Vec<_>>(),
        "one row per code, in order"
    );

    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    for args in [
        &["bucket", "create", "users"][..],
        &["put", "users", "ada", "v"],
        &["bucket", "create", "archived"],
        &["role", "add", "reader", "--read", "users"],
    ] {
        cli_ok(addr, args);
    }
    let archive = dir.path().join("archive").display().to_string();
    cli_ok(
        addr,
        &["bucket", "pause", "archived", "--archive", &archive],
    );
    let reader = dir.path().join("reader.creds").display().to_string();
    cli_ok(
        addr,
        &[
            "user",
            "add",
            "reader",
            "--role",
            "reader",
            "--creds-out",
            &reader,
        ],
    );
    let proxy = cutting_proxy(addr.to_owned());

    for (code, example) in rows {
        let command = example
            .strip_prefix("metakv ")
            .unwrap_or_else(|| panic!("{example:?} is not a metakv command"));
        let endpoint = if code == 7 { &proxy } else { &node.addr };
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("exec \"$METAKV_BIN\" {command}"))
            .current_dir(dir.path())
            .env("METAKV_BIN", env!("CARGO_BIN_EXE_metakv"))
            .env("METAKV_ENDPOINT", endpoint)
            .env("METAKV_CREDS", common::creds_path(dir.path()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "`{example}`: {err}{}",
            String::from_utf8_lossy(&out.stdout)
        );
        if code != 0 {
            assert_eq!(err.lines().count(), 1, "`{example}`: one line: {err}");
        }
    }
    // The cut write was applied: its outcome was unknown, not a failure.
    assert_eq!(cli_ok(addr, &["get", "users", "ada"]).trim(), "v");
}

/// Bad input to every user, role and join-token command: a clear line, exit 2 (bad input), 3
/// (no such user or role), 6 (not an admin) or 8 (exists already), and nothing changed.
#[test]
fn bad_input_to_the_access_commands_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let ok = |args: &[&str]| cli_ok(addr, args);
    ok(&["bucket", "create", "users"]);
    ok(&["role", "add", "reader", "--read", "users"]);
    let reader = dir.path().join("reader.creds");
    ok(&[
        "user",
        "add",
        "ada",
        "--role",
        "reader",
        "--creds-out",
        reader.to_str().unwrap(),
    ]);
    let state = || {
        (
            ok(&["--json", "user", "list"]),
            ok(&["--json", "role", "list"]),
        )
    };
    let before = state();
    let long = "n".repeat(65);
    let exists = reader.to_str().unwrap();
    let no_dir = dir.path().join("no/such/dir.creds");
    let no_dir = no_dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["ls", "_sys"], 2, "metakv's own records"),
        (vec!["get", "_sys", "user/ada"], 2, "user list"),
        (vec!["watch", "_sys"], 2, "role list"),
        (vec!["user", "add", "bad name"], 2, "letters, digits"),
        (vec!["user", "add", ""], 2, "letters, digits"),
        (vec!["user", "add", &long], 2, "1 to 64"),
        (vec!["user", "add", "a.b"], 2, "letters, digits"),
        (vec!["user", "add", "admin"], 2, "built in"),
        (vec!["user", "add", "ada"], 8, "exists already"),
        (
            vec!["user", "add", "bob", "--role", "nope"],
            3,
            "no role \"nope\"",
        ),
        (
            vec!["user", "add", "bob", "--role", "bad role"],
            2,
            "letters, digits",
        ),
        (
            vec!["user", "add", "bob", "--creds-out", exists],
            8,
            "exists",
        ),
        (
            vec!["user", "add", "bob", "--creds-out", no_dir],
            2,
            "no directory",
        ),
        (vec!["user", "remove", "nobody"], 3, "no user"),
        (vec!["user", "remove", "admin"], 2, "built in"),
        (vec!["user", "token", "nobody"], 3, "no user"),
        (
            vec!["user", "token", "ada", "--creds-out", exists],
            8,
            "exists",
        ),
        (vec!["user", "grant", "ada", "nope"], 3, "no role"),
        (vec!["user", "grant", "nobody", "reader"], 3, "no user"),
        (vec!["user", "revoke", "ada", "admin"], 3, "does not hold"),
        (
            vec!["role", "add", "bad role", "--read", "users"],
            2,
            "letters, digits",
        ),
        (
            vec!["role", "add", "r", "--read", "Bad!"],
            2,
            "invalid bucket name",
        ),
        (vec!["role", "add", "r", "--write", "_sys"], 2, "reserved"),
        (vec!["role", "add", "r"], 2, "a role grants something"),
        (
            vec!["role", "add", "reader", "--read", "users"],
            8,
            "exists already",
        ),
        (vec!["role", "add", "admin", "--admin"], 2, "built in"),
        (vec!["role", "remove", "admin"], 2, "built in"),
        (vec!["role", "remove", "nobody"], 3, "no role"),
        (vec!["cluster", "join-token", "--ttl", "8d"], 2, "168 h"),
        (vec!["cluster", "join-token", "--ttl", "soon"], 2, "soon"),
        (
            vec!["cluster", "join-token", "--revoke", "zz"],
            2,
            "16 hex digits",
        ),
        (
            vec!["cluster", "join-token", "--revoke", "00000000000000ff"],
            2,
            "no join token",
        ),
        (
            vec!["--token", "mkvu.ada.0000000000000000.00", "user", "list"],
            6,
            "not authorised",
        ),
        (
            vec!["--creds", exists, "user", "add", "eve"],
            6,
            "administer",
        ),
        (
            vec!["--creds", exists, "role", "remove", "reader"],
            6,
            "administer",
        ),
        (
            vec!["--creds", exists, "cluster", "join-token"],
            6,
            "administer",
        ),
    ];
    for (args, code, says) in cases {
        let (got, out, err) = cli(addr, &args);
        assert_eq!(got, code, "{args:?}: {err}{out}");
        assert!(err.contains(says), "{args:?} says {says:?}: {err}");
        // One line (clap's usage errors add a pointer to --help).
        let lines = err
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("For more information"));
        assert_eq!(lines.count(), 1, "{args:?}: one line: {err}");
    }
    assert_eq!(state(), before, "nothing changed");
    assert!(!dir.path().join("no").exists());
}

/// `bench` against a cluster: exactly `--ops` puts, into a bucket it makes for the run and
/// drops afterwards (`--keep` keeps it); a bucket that exists already is refused (exit 8) and
/// keeps what it holds. `--as-user` removes the user and role it made.
#[test]
fn bench_runs_exactly_its_ops_in_a_bucket_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::serve(dir.path(), 1, "127.0.0.1:0", None);
    let addr = node.addr.as_str();
    let (code, out, err) = cli(
        addr,
        &["bench", "--ops", "101", "--clients", "4", "--as-user"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" clients=4 ops=101 "), "{out}");
    assert!(
        err.contains("into bucket \"bench\"") && err.contains("dropped afterwards"),
        "{err}"
    );
    assert!(!cli_ok(addr, &["bucket", "list"]).contains("bench"));
    assert!(!cli_ok(addr, &["user", "list"]).contains("bench-"));
    assert!(!cli_ok(addr, &["role", "list"]).contains("bench-"));
    // More clients than puts: each put once, no client idle.
    let (code, out, err) = cli(
        addr,
        &[
            "bench",
            "--ops",
            "3",
            "--clients",
            "8",
            "--bucket",
            "b2",
            "--keep",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" clients=3 ops=3 "), "{out}");
    let (counts, _) = bucket_counts(addr, "b2");
    assert_eq!(counts, ("active".to_owned(), 3, 0));
    // An existing bucket: refused, untouched.
    cli_ok(addr, &["bucket", "create", "mine"]);
    cli_ok(addr, &["put", "mine", "k", "v"]);
    let (code, _, err) = cli(addr, &["bench", "--ops", "10", "--bucket", "mine"]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("exists"), "{err}");
    let (counts, _) = bucket_counts(addr, "mine");
    assert_eq!(counts, ("active".to_owned(), 1, 0));
    // Bad numbers are usage errors.
    for bad in [["--ops", "0"], ["--clients", "0"], ["--key-bytes", "8"]] {
        let (code, _, err) = cli(addr, &["bench", bad[0], bad[1]]);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    // `bucket create --if-absent` of an existing bucket succeeds and says so.
    let out = cli_ok(addr, &["bucket", "create", "mine", "--if-absent"]);
    assert!(out.contains("exists already"), "{out}");
}
