//! [`NodeConfig`]: a node's settings, checked before anything is created. Below every
//! other part of the node: the core, the drivers and the composition root read it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metakv_gc::GcConfig;

use crate::archives::{Archives, UriArchives};

/// A node setting out of its range; nothing has been created or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The setting, as the config file names it (`raft` for the timings taken together).
    pub key: &'static str,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: &'static str, message: String) -> ConfigError {
        ConfigError { key, message }
    }
}

/// How a node's connections are secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Security {
    /// TLS 1.3 on every connection, both ends certified by the cluster CA (see
    /// [`crate::tls`]). The node's material is in `<data dir>/tls/`: made on a new cluster's
    /// first start, received with a join token, or loaded on a restart.
    #[default]
    Tls,
    /// Plain TCP, and a peer is whoever it says it is: anyone who reaches the port can read
    /// every value and act as a member. For a trusted network only.
    Insecure,
}

/// How a node runs. [`NodeConfig::new`] gives the defaults.
///
/// ```
/// use metakv::NodeConfig;
///
/// // Node 2 of a cluster, joining through node 1 with a join token (`Kv::join_token`, or
/// // `metakv cluster join-token`); pauses may write under /srv/metakv-archive.
/// let mut config = NodeConfig::new(2, "/var/lib/metakv", "10.0.0.2:7379");
/// config.join = Some("10.0.0.1:7379".into());
/// config.join_token = Some("mkv1....".into());
/// config.hibernation.archive_roots = vec!["/srv/metakv-archive".into()];
/// config.validate().unwrap();
///
/// config.listen = "localhost".into();
/// let e = config.validate().unwrap_err();
/// assert!(e.to_string().contains("host:port"));
/// ```
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id: 1 or more, unique in the cluster, kept with its data dir.
    pub id: u64,
    /// Holds `state.redb`, `raft-log.redb` and `snapshots/`. Created if missing.
    pub data_dir: PathBuf,
    /// Where to listen; port 0 picks a free port.
    pub listen: String,
    /// What other nodes dial; the bound listen address when `None`.
    pub advertise: Option<String>,
    /// Nodes and clients of another cluster id are refused at the handshake.
    pub cluster_id: String,
    /// A member of the cluster to join; `None` starts (or restarts) on the node's own files, and
    /// a node with no files then initializes a single-node cluster.
    pub join: Option<String>,
    /// A join token (`metakv cluster join-token`): what a new node of a secure cluster shows
    /// the member it joins through, to receive its certificate. Not needed once the node has
    /// its certificate (a restart).
    pub join_token: Option<String>,
    /// How connections are secured: TLS with the cluster's certificates (the default), or not.
    pub security: Security,
    /// The largest value a client may write (1 MiB by default; at most 64 MiB, which every
    /// node applies).
    pub value_bytes_max: usize,
    /// redb's page cache for the state file.
    pub cache_bytes: usize,
    /// How often the leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range stands for election.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// A snapshot is taken after this many log entries since the last one, each member at its
    /// own phase so that they do not all build at once...
    pub snapshot_logs_since_last: u64,
    /// ...and this many entries before it are kept in the log for slow followers.
    pub logs_kept_after_snapshot: u64,
    /// How long a client request waits for a leader or a forwarded answer.
    pub request_timeout: Duration,
    /// Open connections at most (peers and clients); at the limit a new connection closes one
    /// idle for a second or more, or is refused. Keep it under the process's open-file limit.
    pub connections_max: usize,
    /// Buckets at most: a create beyond it is refused (checked before it is proposed).
    pub buckets_max: usize,
    /// A connection that sends no request for this long is closed.
    pub idle_timeout: Duration,
    /// Tombstone GC: triggers, minimum age, leases, batch sizes.
    pub gc: GcConfig,
    /// Hibernation: the janitor's interval and where archive locations lead.
    pub hibernation: HibernationConfig,
}

impl NodeConfig {
    /// Node `id` with its files in `data_dir`, listening on `listen` (port 0: any free port),
    /// and every other setting at its default: TLS, cluster id `metakv`, no join, no archive
    /// roots (pauses refused).
    pub fn new(id: u64, data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> NodeConfig {
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            listen: listen.into(),
            advertise: None,
            cluster_id: "metakv".into(),
            join: None,
            join_token: None,
            security: Security::Tls,
            value_bytes_max: metakv_store::VALUE_BYTES_MAX_DEFAULT,
            cache_bytes: metakv_store::CACHE_BYTES_DEFAULT,
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 20_000,
            logs_kept_after_snapshot: 5_000,
            request_timeout: Duration::from_secs(10),
            connections_max: 512,
            buckets_max: 10_000,
            idle_timeout: Duration::from_secs(300),
            gc: GcConfig::default(),
            hibernation: HibernationConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Checks every setting; the error names the setting (as the config file spells it) and
    /// what is wrong with it. [`Node::start`](crate::Node::start) runs this before it touches
    /// the data dir.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range: an id of 0, a cluster id
    /// that is not 1 to 64 of `[A-Za-z0-9._-]`, a `listen` or `advertise` that is not
    /// `host:port`, limits or timings out of their ranges, an archive root that is not
    /// absolute.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let at_least = |key: &'static str, v: u64, min: u64| {
            if v < min {
                return Err(ConfigError::new(
                    key,
                    format!("{key} is {v}; it must be at least {min}"),
                ));
            }
            Ok(())
        };
        at_least("id", self.id, 1)?;
        for (key, addr) in [
            ("listen", Some(&self.listen)),
            ("advertise", self.advertise.as_ref()),
        ] {
            let Some(addr) = addr else { continue };
            let port = addr.rsplit_once(':').filter(|(host, _)| !host.is_empty());
            if port.is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
                return Err(ConfigError::new(
                    key,
                    format!("{key} {addr:?} is not host:port (for example 127.0.0.1:7379)"),
                ));
            }
        }
        // It names the cluster in every certificate (`metakv://<cluster id>/...`).
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.cluster_id.is_empty()
            || self.cluster_id.len() > 64
            || !self.cluster_id.chars().all(allowed)
        {
            return Err(ConfigError::new(
                "cluster_id",
                format!(
                    "cluster_id {:?} must have 1 to 64 characters, each a letter, a digit, '-', '_' or '.'",
                    self.cluster_id
                ),
            ));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > metakv_store::VALUE_BYTES_MAX_CEILING
        {
            return Err(ConfigError::new(
                "limits.value_bytes_max",
                format!(
                    "limits.value_bytes_max is {}; it must be from 1 to {}",
                    self.value_bytes_max,
                    metakv_store::VALUE_BYTES_MAX_CEILING
                ),
            ));
        }
        at_least("limits.cache_bytes", self.cache_bytes as u64, 1 << 20)?;
        at_least(
            "limits.request_timeout (ms)",
            self.request_timeout.as_millis() as u64,
            1,
        )?;
        at_least("limits.connections_max", self.connections_max as u64, 8)?;
        at_least("limits.buckets_max", self.buckets_max as u64, 1)?;
        at_least(
            "limits.idle_timeout (ms)",
            self.idle_timeout.as_millis() as u64,
            // A watch's long poll is a request under way, but a client may pause between
            // polls; a second is the least that leaves it room.
            1_000,
        )?;
        for root in &self.hibernation.archive_roots {
            let s3 = root
                .strip_prefix("s3://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !s3 && !std::path::Path::new(root).is_absolute() {
                return Err(ConfigError::new(
                    "hibernation.archive_roots",
                    format!(
                        "hibernation.archive_roots: {root:?} is not an absolute directory or \
                         s3://bucket/prefix"
                    ),
                ));
            }
        }
        at_least("raft.heartbeat (ms)", self.heartbeat_ms, 1)?;
        if self.election_timeout_min_ms >= self.election_timeout_max_ms
            || self.heartbeat_ms >= self.election_timeout_min_ms
        {
            return Err(ConfigError::new(
                "raft",
                format!(
                    "raft timings need heartbeat ({} ms) < election_timeout_min ({} ms) < election_timeout_max ({} ms)",
                    self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms
                ),
            ));
        }
        at_least(
            "raft.snapshot_logs_since_last",
            self.snapshot_logs_since_last,
            1,
        )?;
        for (key, v) in [
            ("gc.page_size", u64::from(self.gc.page_size)),
            ("gc.purge_batch", u64::from(self.gc.purge_batch)),
            ("gc.purges_in_flight", u64::from(self.gc.purges_in_flight)),
            ("gc.lease (ms)", self.gc.lease_ms),
            ("gc.call_timeout (ms)", self.gc.call_timeout_ms),
            ("gc.compact_timeout (ms)", self.gc.compact_timeout_ms),
        ] {
            at_least(key, v, 1)?;
        }
        Ok(())
    }
}

/// Hibernation settings; [`HibernationConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct HibernationConfig {
    /// The janitor runs this often on the leader (and whenever a node becomes leader); 0 runs
    /// it only on leadership changes.
    pub janitor_interval_ms: u64,
    /// Where archive locations lead.
    pub archives: Arc<dyn Archives>,
    /// The directories (absolute) and `s3://bucket/prefix`es that a pause may write and a
    /// resume read; a location under none of them is refused before anything changes. Empty
    /// (the default): every pause is refused until the operator names some.
    pub archive_roots: Vec<String>,
}

impl Default for HibernationConfig {
    fn default() -> Self {
        HibernationConfig {
            janitor_interval_ms: 60_000,
            archives: Arc::new(UriArchives),
            archive_roots: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_id_is_a_name_a_certificate_can_carry() {
        let mut c = NodeConfig::new(1, "/tmp/x", "127.0.0.1:0");
        for good in ["metakv", "prod-eu.1", "a_b"] {
            c.cluster_id = good.into();
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            c.cluster_id = bad.into();
            assert_eq!(c.validate().unwrap_err().key, "cluster_id", "{bad:?}");
        }
    }
}
