//! The client API: its messages (the `client` service of the transport) and [`Kv`], the typed
//! operations that [`Node`](crate::Node) and [`Client`](crate::Client) both offer.

use metakv_raft::Response;
use metakv_store::{Applied, BucketInfo, Expect, Op, Record};
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub mod access;
pub use access::{ADMIN, ALL_BUCKETS, AccessReply, AccessRequest, Grants, Need, UserInfo};

use crate::error::{Error, Result};

pub(crate) mod backup;
mod kv;

pub use kv::{Kv, Watch, WatchEvent};
use metakv_gc::hibernate::{OpId, Phase};
use metakv_gc::{JobId, JobRecord};

/// Name of the client service on the transport.
pub const CLIENT_SERVICE: &str = "client";

/// How many of the newest job records `gc_wait` looks through for its job.
pub const GC_WAIT_RECORDS: u32 = 20;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began, on any node (a read index
    /// through the leader).
    #[default]
    Linearizable,
    /// This node's copy as it is: may lag behind the leader, answers during a partition.
    Local,
}

/// A request to the client service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Any op, through the Raft log (a follower forwards it to the leader).
    Write(Op),
    Get {
        bucket: String,
        key: Vec<u8>,
        include_tombstones: bool,
        consistency: Consistency,
    },
    Scan {
        bucket: String,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        include_tombstones: bool,
        consistency: Consistency,
    },
    /// The bucket's changes after a revision, from this node's copy.
    /// With `wait_ms` > 0 and nothing to report yet, the node waits up to that long for the
    /// next applied entry (a long poll, what a watch is made of); at most
    /// [`crate::WATCH_WAIT_MS_MAX`], a longer wait is refused.
    Changes {
        bucket: String,
        prefix: Vec<u8>,
        after_rev: u64,
        limit: u32,
        wait_ms: u32,
    },
    Bucket {
        bucket: String,
        consistency: Consistency,
    },
    Buckets {
        consistency: Consistency,
    },
    Status,
    /// Every member's status, as each reports it (the answering node asks them).
    ClusterStatus,
    /// Adds node `id` at `addr`: as a learner, caught up, then as a voter. `incarnation` is
    /// the joining node's (from its data dir): the same incarnation asking again is answered
    /// with the join's outcome; `None` (an operator's `add-node`) refuses a voter's id.
    Join {
        id: u64,
        addr: String,
        incarnation: Option<u64>,
    },
    /// Removes node `id` from the voters.
    Remove {
        id: u64,
    },
    /// Makes a join token valid for `ttl_ms` (an admin's request; see `crate::node`, "Join
    /// tokens").
    JoinToken {
        ttl_ms: u64,
    },
    /// Revokes the join token `id` (the second part of a token), used or not.
    RevokeJoinToken {
        id: String,
    },
    /// A new node's first request, with a join token and no certificate of its own: it
    /// receives node `id`'s certificate, reachable at `addr`, and the cluster CA.
    Enroll {
        token: String,
        id: u64,
        addr: String,
    },
    /// Users and roles (see [`access`]).
    Access(AccessRequest),
    /// Starts a tombstone GC job on the leader; answered with its id once every member has
    /// answered the version probe. `min_age_ms` overrides the node's `gc.min_age`.
    GcRun {
        dry_run: bool,
        min_age_ms: Option<u64>,
    },
    /// The running GC job (if any) and the last `limit` job records, newest first.
    GcStatus {
        limit: u32,
    },
    /// Compacts the answering node's state file (rebuilds it). Its requests wait meanwhile;
    /// the rest of the cluster goes on.
    CompactNode,
    /// Checks the answering node's store: redb's page checksums, every record's crc and
    /// contents, every index and counter. Its requests wait meanwhile.
    CheckNode,
    /// Starts pausing a bucket to an archive location, on the leader; answered with the
    /// operation's id once the bucket is `Pausing`.
    PauseBucket {
        bucket: String,
        archive: String,
    },
    /// Starts resuming a paused bucket, on the leader, from its archive or from `archive`
    /// (where its objects were moved); answered once the bucket is `Resuming`.
    ResumeBucket {
        bucket: String,
        archive: Option<String>,
    },
    /// A bucket's state, its last pause or resume, and the one running, from the leader.
    Hibernation {
        bucket: String,
    },
    /// Takes a backup of the whole store on the leader, after its read index, and holds it
    /// there to be pulled (see `crate::backup`).
    BackupBegin,
    /// Up to 1 MiB of backup `id` from `offset`; any node passes it on to `node`.
    BackupChunk {
        node: u64,
        id: u64,
        offset: u64,
    },
    /// Lets node `node` remove backup `id`.
    BackupEnd {
        node: u64,
        id: u64,
    },
    /// Whether the marker `marker` the leader wrote into the local archive location
    /// `location` is there, readable, on the answering voter (see `crate::hibernate`): a
    /// member's request only.
    ArchiveVisible {
        location: String,
        marker: String,
    },
    /// `request`, passed on by a member for user `user`, with the token the user's connection
    /// carried (if it carried one): the node that answers authorises it again, and takes it
    /// only from a member.
    OnBehalf {
        user: String,
        token: Option<String>,
        request: Box<ClientRequest>,
    },
}

/// What compacting one node did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCompacted {
    pub node: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What checking one node's store found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCheck {
    pub node: u64,
    /// No problem found, and redb's verdict is not `failed`.
    pub ok: bool,
    /// redb's verdict on the file: `clean`, `repaired`, or `failed: <why>`.
    pub file: String,
    pub records: u64,
    /// Every problem found, up to `metakv_store::CHECK_PROBLEMS_LISTED_MAX`.
    pub problems: Vec<String>,
}

impl NodeCheck {
    pub fn from_report(node: u64, report: &metakv_store::CheckReport) -> NodeCheck {
        NodeCheck {
            node,
            ok: report.is_ok(),
            file: match &report.file {
                metakv_store::FileCheck::Clean => "clean".to_owned(),
                metakv_store::FileCheck::Repaired => "repaired".to_owned(),
                metakv_store::FileCheck::Failed(why) => format!("failed: {why}"),
            },
            records: report.records_checked,
            problems: report.problems.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// The changes of a bucket after a revision (see `metakv_store::ReadView::changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangesPage {
    Events {
        events: Vec<(Vec<u8>, Record)>,
        next_after_rev: u64,
        more: bool,
    },
    Compacted {
        floor: u64,
    },
}

/// A page of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPage {
    pub items: Vec<(Vec<u8>, Record)>,
    pub next: Option<Vec<u8>>,
}

/// What a node reports of itself and of the cluster as it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub addr: String,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    pub members: Vec<Member>,
    /// Bytes of `state.redb` and `raft-log.redb`.
    pub state_file_bytes: u64,
    pub log_file_bytes: u64,
    /// Durable log appends since the node started, and the entries they held: their ratio is
    /// the group-commit factor.
    pub log_fsyncs: u64,
    pub log_entries: u64,
    /// Whether the node serves TLS only (`false`: it runs insecure, plain TCP).
    pub secure: bool,
}

/// The cluster as seen from every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader the answering node knows of.
    pub leader: Option<u64>,
    pub term: u64,
    pub nodes: Vec<MemberReport>,
}

/// One member: its own status, or why it could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub member: Member,
    /// Its status, or why it could not be had (`Unavailable`: unreachable or no answer in
    /// time; `Protocol`: an answer that was not a status).
    pub status: Result<NodeStatus, Error>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// The answer of the client service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    Applied(Applied),
    Record(Option<Record>),
    Page(ScanPage),
    Changes(ChangesPage),
    Bucket(BucketInfo),
    Buckets(Vec<(String, BucketInfo)>),
    Status(NodeStatus),
    ClusterStatus(ClusterStatus),
    GcStarted(JobId),
    GcStatus(GcStatus),
    Compacted(NodeCompacted),
    Checked(NodeCheck),
    OpStarted(OpId),
    Hibernation(HibernationStatus),
    Done,
    Error(Error),
    Backup(BackupInfo),
    Bytes(Vec<u8>),
    JoinToken(JoinTokenInfo),
    Enrolled(Enrollment),
    Access(AccessReply),
}

/// A join token, as made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    /// The token to give `metakv serve --token` (shown once; only its hash is kept).
    pub token: String,
    /// Its id, to revoke it.
    pub id: String,
    /// When it expires (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// What a node receives with a join token: its certificate and key, and the cluster CA's
/// (every secure member holds the CA key, so that joins go through any member).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // IMPORTANT: never print a key.
        f.debug_struct("Enrollment")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

pub(crate) fn applied(response: Response) -> Result<Applied> {
    match response {
        Response::Applied(a) => Ok(a),
        Response::Rejected(r) => Err(Error::Rejected(r)),
    }
}

pub(crate) fn unexpected<T>(reply: ClientReply) -> Result<T> {
    match reply {
        ClientReply::Error(e) => Err(e),
        other => Err(Error::Protocol(format!("unexpected reply {other:?}"))),
    }
}

// What the drivers report: GC, hibernation, backups.

/// What `gc status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStatus {
    /// The job the leader runs now, if any.
    pub running: Option<metakv_gc::Progress>,
    /// The last jobs' records, newest first.
    pub jobs: Vec<JobRecord>,
}

/// A running operation's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpProgress {
    pub op: OpId,
    pub kind: metakv_gc::hibernate::OpKind,
    /// What it is doing: "exporting", "verifying", "dropping", "restoring", "finishing".
    pub step: String,
    pub records: u64,
    pub bytes: u64,
    /// What the whole operation moves, once known (a resume knows it from the manifest).
    pub records_total: Option<u64>,
    pub bytes_total: Option<u64>,
}

/// What `bucket status` shows of a bucket's hibernation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernationStatus {
    pub bucket: String,
    pub state: metakv_store::BucketState,
    /// The bucket's last pause or resume.
    pub record: Option<metakv_gc::hibernate::HibernationRecord>,
    /// The operation the leader runs on it now.
    pub running: Option<OpProgress>,
}

/// A backup a node has taken and holds for the client to pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The node holding it.
    pub node: u64,
    pub id: u64,
    /// Size and crc32 of the whole file.
    pub bytes: u64,
    pub crc32: u32,
    /// The store's last revision in it.
    pub rev: u64,
    /// The Raft log index it was taken at.
    pub applied: u64,
    pub buckets: u64,
    /// Records and tombstones.
    pub records: u64,
}

impl ClientRequest {
    /// The request's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::Write(Op::Put { .. }) => "put",
            ClientRequest::Write(Op::Delete { .. }) => "delete",
            ClientRequest::Write(Op::CreateBucket { .. }) => "bucket create",
            ClientRequest::Write(Op::DropBucket { .. }) => "bucket drop",
            ClientRequest::Write(_) => "an internal write",
            ClientRequest::Get { .. } => "get",
            ClientRequest::Scan { .. } => "scan",
            ClientRequest::Changes { .. } => "changes",
            ClientRequest::Bucket { .. } => "bucket status",
            ClientRequest::Buckets { .. } => "bucket list",
            ClientRequest::Status => "status",
            ClientRequest::ClusterStatus => "cluster status",
            ClientRequest::Join { .. } => "join",
            ClientRequest::Remove { .. } => "remove-node",
            ClientRequest::JoinToken { .. } => "join-token",
            ClientRequest::RevokeJoinToken { .. } => "join-token revoke",
            ClientRequest::Enroll { .. } => "enroll",
            ClientRequest::Access(_) => "user and role management",
            ClientRequest::GcRun { .. } => "gc run",
            ClientRequest::GcStatus { .. } => "gc status",
            ClientRequest::CompactNode => "compact",
            ClientRequest::CheckNode => "check",
            ClientRequest::PauseBucket { .. } => "bucket pause",
            ClientRequest::ResumeBucket { .. } => "bucket resume",
            ClientRequest::Hibernation { .. } => "hibernation status",
            ClientRequest::BackupBegin
            | ClientRequest::BackupChunk { .. }
            | ClientRequest::BackupEnd { .. } => "backup",
            ClientRequest::ArchiveVisible { .. } => "archive check",
            ClientRequest::OnBehalf { request, .. } => request.name(),
        }
    }

    /// The answer to this request when a call that carried it failed with `reason` after it
    /// was sent: [`Error::Ambiguous`] for a write, `Unavailable` for anything else (a read
    /// changed nothing).
    pub(crate) fn failed_after_sending(&self, reason: String) -> Error {
        match self {
            ClientRequest::OnBehalf { request, .. } => request.failed_after_sending(reason),
            ClientRequest::Write(op) => Error::Ambiguous {
                what: describe(op),
                reason,
            },
            _ => Error::Unavailable(reason),
        }
    }
}

/// A write as a person names it: `put users/"ada"`.
fn describe(op: &Op) -> String {
    use metakv_store::KeyDisplay;
    match op {
        Op::Put { bucket, key, .. } => format!("put {bucket}/{}", KeyDisplay(key.clone())),
        Op::Delete { bucket, key, .. } => {
            format!("delete {bucket}/{}", KeyDisplay(key.clone()))
        }
        Op::CreateBucket { bucket } => format!("create bucket {bucket}"),
        Op::DropBucket { bucket } => format!("drop bucket {bucket}"),
        _ => "an internal write".to_owned(),
    }
}
