//! The client and admin commands' arguments, as clap parses them.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Every member's role, applied index and file size, as each reports it.
    Status,
    /// The members and their addresses.
    Members,
    /// Adds node ID at ADDR (learner first, then voter once caught up). A new node of a
    /// secure cluster joins by itself instead: `serve --join ADDR --token TOKEN`.
    AddNode {
        /// The new node's id.
        id: u64,
        /// The address it serves on (host:port).
        addr: String,
    },
    /// Removes node ID from the cluster (exit code 3 if it is not a member).
    RemoveNode {
        /// The member to remove.
        id: u64,
    },
    /// Prints a join token: a new node joins with `metakv serve --join ADDR --token TOKEN`
    /// and receives its certificate. The token is shown once; it works once, until it expires.
    JoinToken {
        /// How long the token works (`30m`, `1h`, `2d`; at most 7 days).
        #[arg(long, default_value = "1h", value_parser = crate::cli::parse_duration_ms)]
        ttl: u64,
        /// Revokes the token with this id (the id `join-token` printed) instead.
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Adds user NAME and prints its token (shown once; only its hash is kept).
    Add {
        /// The user's name: 1 to 64 letters, digits, '_' or '-'.
        name: String,
        /// A role to hold (repeat for more).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Also write a credentials file for the user: the CA certificate and the token (0600).
        #[arg(long, value_name = "FILE")]
        creds_out: Option<std::path::PathBuf>,
    },
    /// Every user, its roles and how many tokens it has.
    List,
    /// Removes user NAME: its tokens stop working at once.
    Remove {
        /// The user to remove.
        name: String,
    },
    /// Prints a new token for user NAME.
    Token {
        /// The user.
        name: String,
        /// The user's other tokens stop working.
        #[arg(long)]
        revoke_all: bool,
        /// Also write a credentials file for the user (the CA certificate and the token).
        #[arg(long, value_name = "FILE")]
        creds_out: Option<std::path::PathBuf>,
    },
    /// Gives user NAME role ROLE.
    Grant {
        /// The user.
        name: String,
        /// The role it gets.
        role: String,
    },
    /// Takes role ROLE from user NAME.
    Revoke {
        /// The user.
        name: String,
        /// The role it loses.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Adds role NAME: BUCKET is a bucket name or `*` (every bucket).
    Add {
        /// The role's name: 1 to 64 letters, digits, '_' or '-'.
        name: String,
        /// Read (get, ls, watch, bucket status) on BUCKET (repeat for more).
        #[arg(long, value_name = "BUCKET")]
        read: Vec<String>,
        /// Write (put, del) on BUCKET (repeat for more).
        #[arg(long, value_name = "BUCKET")]
        write: Vec<String>,
        /// Everything else: buckets, GC, compaction, checks, backups, membership, users, roles.
        #[arg(long)]
        admin: bool,
    },
    /// Every role and what it grants.
    List,
    /// Removes role NAME (users that hold it lose what it granted at once).
    Remove {
        /// The role to remove.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BucketCmd {
    /// Creates a bucket (exit code 8 if it exists, unless --if-absent).
    Create {
        /// The bucket's name: 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter or digit.
        name: String,
        /// Succeed (and say so) when the bucket exists already.
        #[arg(long)]
        if_absent: bool,
    },
    /// Every bucket, its state and its record counts.
    List,
    /// Drops a bucket and everything in it.
    Drop {
        /// The bucket to drop.
        name: String,
    },
    /// State, live records and tombstones, and the bucket's last (or running) pause or resume.
    Status {
        /// The bucket.
        name: String,
    },
    /// Pauses a bucket to an archive: exports it, verifies the archive, then drops its data.
    /// Reads and writes answer "bucket paused" until it is resumed.
    Pause {
        /// The bucket to pause.
        name: String,
        /// Where the archive goes: a directory (`file:///dir` or a plain path), or
        /// `s3://bucket/prefix` in a build with the `s3` feature.
        #[arg(long)]
        archive: String,
        /// Print the operation id and return once the bucket is pausing.
        #[arg(long)]
        no_wait: bool,
    },
    /// Resumes a paused bucket from its archive, with every record and revision it had.
    Resume {
        /// The paused bucket.
        name: String,
        /// The archive's location if its objects were moved since the pause.
        #[arg(long)]
        archive: Option<String>,
        /// Print the operation id and return once the bucket is resuming.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GcCmd {
    /// Runs a tombstone GC job now and waits for it, showing its progress.
    Run {
        /// Report what would be purged; purge and compact nothing.
        #[arg(long)]
        dry_run: bool,
        /// Collect only tombstones at least this old (e.g. 0, 30s, 10m, 1h); default: the
        /// cluster's gc.min_age.
        #[arg(long, value_parser = parse_duration_ms)]
        min_age: Option<u64>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// The running job and the last jobs' records, newest first.
    Status {
        /// How many of the last jobs to show.
        #[arg(long, default_value_t = 5)]
        limit: u32,
    },
}

/// `0`, `500ms`, `30s`, `10m`, `1h`, `2d` as milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 0, 500ms, 30s, 10m, 1h)"))?;
    let scale = match unit {
        "" if n == 0 => 1,
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: a duration needs a unit: ms, s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Users: add (prints its token once), list, remove, a new token, grant and revoke roles.
    #[command(subcommand)]
    User(UserCmd),
    /// Roles: what a user may read, write or administer.
    #[command(subcommand)]
    Role(RoleCmd),
    /// Integrity check: redb's page checksums, every record's crc and contents, every index.
    /// Of the node at --endpoint while it runs (its requests wait meanwhile), or with
    /// --data-dir of a stopped node's files. Exit 1 with every problem listed.
    Check {
        /// A stopped node's data dir: check its files (the state and the Raft log), asking no
        /// node.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Compaction (a rebuild of the state file): of every node, one at a time, followers
    /// first; of one with --node; or with --offline --data-dir of a stopped node's files.
    Compact {
        /// Only this member (exit code 3 if it is not one).
        #[arg(long, conflicts_with = "offline")]
        node: Option<u64>,
        /// A stopped node's files, with --data-dir (no node is asked).
        #[arg(long, requires = "data_dir")]
        offline: bool,
        /// The stopped node's data dir (with --offline).
        #[arg(long, requires = "offline")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Writes a backup of the whole store to FILE: taken on the leader, consistent as of a
    /// moment after every write acknowledged before the command, checked whole (size, crc,
    /// every frame) and made durable before FILE appears.
    Backup {
        /// Where the backup goes (written as FILE.partial until it is whole).
        file: std::path::PathBuf,
        /// Replace FILE if it exists (without it, an existing FILE is refused, exit code 8).
        #[arg(long)]
        force: bool,
    },
    /// Makes a new node's data dir from a backup, offline: start it with `serve`, then add
    /// nodes with `serve --join`. Records keep their revisions, and new writes get higher ones.
    Restore {
        /// A backup written by `metakv backup`.
        file: std::path::PathBuf,
        /// The new node's data dir (created; it must hold no node files).
        #[arg(long, default_value = "metakv-data")]
        data_dir: std::path::PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The address the new node will serve on (it records its own address on its first
        /// start if it serves elsewhere).
        #[arg(long, default_value = "127.0.0.1:7379")]
        advertise: String,
    },
    /// Members, their roles and progress; add and remove nodes.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Tombstone GC: run a job now (or a dry run), and the status of the last jobs.
    #[command(subcommand)]
    Gc(GcCmd),
    /// Create, list, drop, pause and resume buckets, and show one's state.
    #[command(subcommand)]
    Bucket(BucketCmd),
    /// Writes VALUE (or --file, or standard input) under KEY.
    Put {
        /// The bucket.
        bucket: String,
        /// The key (1 to 1,024 bytes).
        key: String,
        /// The value; without it, --file or standard input.
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, conflicts_with = "value")]
        file: Option<std::path::PathBuf>,
        /// Only if the key's current revision is N.
        #[arg(long, conflicts_with = "if_absent")]
        if_rev: Option<u64>,
        /// Only if the key has no live record.
        #[arg(long)]
        if_absent: bool,
    },
    /// Prints KEY's record: a linearizable read through the leader, or --local.
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// This node's copy, without asking the leader (may be stale).
        #[arg(long)]
        local: bool,
    },
    /// Deletes KEY, leaving a tombstone (watchers and compare-and-set see it).
    Del {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Only if the key's current revision is N.
        #[arg(long)]
        if_rev: Option<u64>,
    },
    /// Lists records in key order.
    Ls {
        /// The bucket.
        bucket: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Lists at most this many records (and says on stderr when more follow)
        /// [default: every record, read a page at a time].
        #[arg(long)]
        limit: Option<usize>,
        /// Lists tombstones too.
        #[arg(long)]
        tombstones: bool,
    },
    /// Prints changes as they happen (one line each), from revision --from-rev on.
    Watch {
        /// The bucket.
        bucket: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Changes from revision N on (history: once GC has purged past N, the watch exits 1
        /// with "compacted"); default: changes from now.
        #[arg(long, value_name = "N")]
        from_rev: Option<u64>,
    },
}

impl ClientCmd {
    /// Whether the command works on files only and talks to no node (no credentials needed).
    pub fn is_offline(&self) -> bool {
        matches!(
            self,
            ClientCmd::Check { data_dir: Some(_) }
                | ClientCmd::Compact {
                    data_dir: Some(_),
                    ..
                }
                | ClientCmd::Restore { .. }
        )
    }
}
