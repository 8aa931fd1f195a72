//! `metakv serve --config FILE`: a TOML file that can set everything the flags set, plus the
//! GC, Raft and limit settings. Flags override the file; the file overrides the defaults.
//! Durations are written as the flags take them (`500ms`, `30s`, `10m`, `1h`, `1d`).
//!
//! ```toml
//! id = 1
//! data_dir = "/var/lib/metakv"
//! listen = "127.0.0.1:7379"
//! # advertise = "10.0.0.1:7379"
//! # join = "127.0.0.1:7380"
//! cluster_id = "prod"
//!
//! [limits]
//! value_bytes_max = 1048576
//! cache_bytes = 33554432
//! request_timeout = "10s"
//! connections_max = 512
//! buckets_max = 10000
//! idle_timeout = "5m"
//!
//! [raft]
//! heartbeat = "100ms"
//! election_timeout_min = "500ms"
//! election_timeout_max = "1s"
//! snapshot_logs_since_last = 20000
//! logs_kept_after_snapshot = 5000
//!
//! [gc]
//! interval = "1h"
//! threshold = 1000000
//! min_age = "10m"
//! lease = "30s"
//! page_size = 2000
//! purge_batch = 32
//! purges_in_flight = 1
//! call_timeout = "20s"
//! compact_timeout = "10m"
//! pin_grace = "10s"
//!
//! [hibernation]
//! janitor_interval = "1m"
//! archive_roots = ["/srv/metakv-archive", "s3://bucket/prefix"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use metakv::NodeConfig;
use serde::Deserialize;

use crate::cli::parse_duration_ms;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub join: Option<String>,
    pub cluster_id: Option<String>,
    /// `insecure = true`: plain TCP, no certificates (see `--insecure`).
    pub insecure: Option<bool>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub gc: GcSection,
    #[serde(default)]
    pub hibernation: HibernationSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HibernationSection {
    pub janitor_interval: Option<String>,
    pub archive_roots: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub value_bytes_max: Option<usize>,
    pub cache_bytes: Option<usize>,
    pub request_timeout: Option<String>,
    pub connections_max: Option<usize>,
    pub idle_timeout: Option<String>,
    pub buckets_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSection {
    pub heartbeat: Option<String>,
    pub election_timeout_min: Option<String>,
    pub election_timeout_max: Option<String>,
    pub snapshot_logs_since_last: Option<u64>,
    pub logs_kept_after_snapshot: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    pub interval: Option<String>,
    pub threshold: Option<u64>,
    pub min_age: Option<String>,
    pub lease: Option<String>,
    pub page_size: Option<u32>,
    pub purge_batch: Option<u32>,
    pub purges_in_flight: Option<u32>,
    pub call_timeout: Option<String>,
    pub compact_timeout: Option<String>,
    pub pin_grace: Option<String>,
}

/// What `serve`'s flags said; `None` where a flag was not given.
#[derive(Debug, Default)]
pub struct Flags {
    pub id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub join: Option<String>,
    pub token: Option<String>,
    pub archive_roots: Vec<String>,
    pub insecure: bool,
    pub cluster_id: Option<String>,
    pub gc_interval: Option<u64>,
    pub gc_threshold: Option<u64>,
    pub gc_min_age: Option<u64>,
}

/// Reads and checks a config file; the error names the file and what is wrong in it.
pub fn read(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let message = e.to_string();
        let first = message.lines().next().unwrap_or("invalid").trim();
        let detail = message.lines().last().unwrap_or("").trim();
        format!("config {}: {first} {detail}", path.display())
    })
}

/// Flags over the file over the defaults.
pub fn resolve(file: FileConfig, flags: Flags) -> Result<NodeConfig, String> {
    let id = flags.id.or(file.id).unwrap_or(1);
    let data_dir = flags
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| "metakv-data".into());
    let listen = flags
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7379".into());
    let mut c = NodeConfig::new(id, data_dir, listen);
    c.advertise = flags.advertise.or(file.advertise);
    c.join = flags.join.or(file.join);
    c.join_token = flags.token;
    c.hibernation.archive_roots = file.hibernation.archive_roots.clone().unwrap_or_default();
    c.hibernation.archive_roots.extend(flags.archive_roots);
    if flags.insecure || file.insecure == Some(true) {
        c.security = metakv::Security::Insecure;
    }
    if let Some(cluster_id) = flags.cluster_id.or(file.cluster_id) {
        c.cluster_id = cluster_id;
    }
    let ms = |key: &str, v: &Option<String>| -> Result<Option<u64>, String> {
        v.as_deref()
            .map(|s| parse_duration_ms(s).map_err(|e| format!("config: {key}: {e}")))
            .transpose()
    };
    let l = &file.limits;
    if let Some(v) = l.value_bytes_max {
        c.value_bytes_max = v;
    }
    if let Some(v) = l.cache_bytes {
        c.cache_bytes = v;
    }
    if let Some(v) = l.connections_max {
        c.connections_max = v;
    }
    if let Some(v) = l.buckets_max {
        c.buckets_max = v;
    }
    if let Some(v) = ms("limits.idle_timeout", &l.idle_timeout)? {
        c.idle_timeout = Duration::from_millis(v);
    }
    if let Some(v) = ms("limits.request_timeout", &l.request_timeout)? {
        c.request_timeout = Duration::from_millis(v);
    }
    let r = &file.raft;
    set(&mut c.heartbeat_ms, ms("raft.heartbeat", &r.heartbeat)?);
    set(
        &mut c.election_timeout_min_ms,
        ms("raft.election_timeout_min", &r.election_timeout_min)?,
    );
    set(
        &mut c.election_timeout_max_ms,
        ms("raft.election_timeout_max", &r.election_timeout_max)?,
    );
    set(&mut c.snapshot_logs_since_last, r.snapshot_logs_since_last);
    set(&mut c.logs_kept_after_snapshot, r.logs_kept_after_snapshot);
    let g = &file.gc;
    set(
        &mut c.gc.interval_ms,
        flags.gc_interval.or(ms("gc.interval", &g.interval)?),
    );
    set(
        &mut c.gc.tombstone_threshold,
        flags.gc_threshold.or(g.threshold),
    );
    set(
        &mut c.gc.min_age_ms,
        flags.gc_min_age.or(ms("gc.min_age", &g.min_age)?),
    );
    set(&mut c.gc.lease_ms, ms("gc.lease", &g.lease)?);
    set(&mut c.gc.page_size, g.page_size);
    set(&mut c.gc.purge_batch, g.purge_batch);
    set(&mut c.gc.purges_in_flight, g.purges_in_flight);
    set(
        &mut c.gc.call_timeout_ms,
        ms("gc.call_timeout", &g.call_timeout)?,
    );
    set(
        &mut c.gc.compact_timeout_ms,
        ms("gc.compact_timeout", &g.compact_timeout)?,
    );
    set(&mut c.gc.pin_grace_ms, ms("gc.pin_grace", &g.pin_grace)?);
    set(
        &mut c.hibernation.janitor_interval_ms,
        ms(
            "hibernation.janitor_interval",
            &file.hibernation.janitor_interval,
        )?,
    );
    // Everything is checked here, before `serve` writes anything.
    c.validate().map_err(|e| format!("config: {e}"))?;
    Ok(c)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        resolve(file, Flags::default())
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults_it_names() {
        let doc = include_str!("config.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&doc).unwrap();
        let d = NodeConfig::new(1, "x", "y");
        assert_eq!((c.id, c.cluster_id.as_str()), (1, "prod"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/metakv"));
        assert_eq!(c.gc, d.gc);
        assert_eq!(
            c.hibernation.janitor_interval_ms,
            d.hibernation.janitor_interval_ms
        );
        assert_eq!(
            (
                c.heartbeat_ms,
                c.election_timeout_min_ms,
                c.election_timeout_max_ms
            ),
            (
                d.heartbeat_ms,
                d.election_timeout_min_ms,
                d.election_timeout_max_ms
            )
        );
        assert_eq!(
            (c.value_bytes_max, c.cache_bytes),
            (d.value_bytes_max, d.cache_bytes)
        );
        assert_eq!(c.request_timeout, d.request_timeout);
    }

    #[test]
    fn the_readme_example_parses_to_the_defaults_it_names() {
        let readme = include_str!("../README.md");
        let from = readme.find("### Configuration file").unwrap();
        let doc: String = readme[from..]
            .lines()
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&doc).unwrap();
        let d = NodeConfig::new(1, "x", "y");
        assert_eq!(c.gc, d.gc);
        assert_eq!((c.id, c.listen.as_str()), (1, "127.0.0.1:7379"));
        assert_eq!(c.request_timeout, d.request_timeout);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            "id = 3\nlisten = \"127.0.0.1:9\"\n[gc]\nmin_age = \"5m\"\nthreshold = 7\n",
        )
        .unwrap();
        let flags = Flags {
            id: Some(4),
            gc_min_age: Some(1_000),
            ..Flags::default()
        };
        let c = resolve(file, flags).unwrap();
        assert_eq!((c.id, c.listen.as_str()), (4, "127.0.0.1:9"));
        assert_eq!((c.gc.min_age_ms, c.gc.tombstone_threshold), (1_000, 7));
        assert_eq!(c.data_dir, PathBuf::from("metakv-data"));
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let err = parse("idd = 1").unwrap_err();
        assert!(err.contains("idd"), "{err}");
        let err = parse("[gc]\ninterval = \"5x\"").unwrap_err();
        assert!(err.contains("gc.interval") && err.contains("unit"), "{err}");
        let err = parse("[gc]\npurge_batch = 0").unwrap_err();
        assert!(err.contains("gc.purge_batch"), "{err}");
        let err = parse("[raft]\nheartbeat = \"2s\"").unwrap_err();
        assert!(err.contains("heartbeat"), "{err}");
        let err = parse("id = \"one\"").unwrap_err();
        assert!(err.contains("id") || err.contains("integer"), "{err}");
    }
}
