//! The client API: its messages (the `client` service of the transport) and [`Kv`], the typed
//! operations that [`Node`](crate::Node) and [`Client`](crate::Client) both offer.

use metakv_raft::Response;
use metakv_store::{Applied, BucketInfo, Expect, Op, Record};
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
    /// Adds node `id` at `addr`: as a learner, caught up, then as a voter.
    Join {
        id: u64,
        addr: String,
    },
    /// Removes node `id` from the voters.
    Remove {
        id: u64,
    },
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
    pub status: Result<NodeStatus, String>,
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

/// The typed client operations, over any way of reaching a cluster.
#[allow(async_fn_in_trait)]
pub trait Kv {
    /// Sends one request and waits for its reply.
    async fn request(&self, request: ClientRequest) -> Result<ClientReply>;

    /// Applies any op through the log.
    async fn write(&self, op: Op) -> Result<Applied> {
        match self.request(ClientRequest::Write(op)).await? {
            ClientReply::Applied(a) => Ok(a),
            other => unexpected(other),
        }
    }

    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        self.write(Op::CreateBucket {
            bucket: bucket.to_owned(),
        })
        .await
        .map(|_| ())
    }

    async fn drop_bucket(&self, bucket: &str) -> Result<Applied> {
        self.write(Op::DropBucket {
            bucket: bucket.to_owned(),
        })
        .await
    }

    /// Writes `value` under `key` if `expect` holds; `Applied::Written { rev }` or
    /// `Applied::Conflict { current }`.
    async fn put(&self, bucket: &str, key: &[u8], value: &[u8], expect: Expect) -> Result<Applied> {
        self.write(Op::Put {
            bucket: bucket.into(),
            key: key.to_vec(),
            value: value.to_vec(),
            expect,
        })
        .await
    }

    /// Deletes `key` (leaving a tombstone) if `expect` holds; `Applied::NotFound` if no live
    /// record was there.
    async fn delete(&self, bucket: &str, key: &[u8], expect: Expect) -> Result<Applied> {
        self.write(Op::Delete {
            bucket: bucket.into(),
            key: key.to_vec(),
            expect,
        })
        .await
    }

    /// The key's live record, linearizably.
    async fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Record>> {
        self.get_with(bucket, key, Consistency::Linearizable, false)
            .await
    }

    async fn get_with(
        &self,
        bucket: &str,
        key: &[u8],
        consistency: Consistency,
        include_tombstones: bool,
    ) -> Result<Option<Record>> {
        match self
            .request(ClientRequest::Get {
                bucket: bucket.into(),
                key: key.to_vec(),
                include_tombstones,
                consistency,
            })
            .await?
        {
            ClientReply::Record(r) => Ok(r),
            other => unexpected(other),
        }
    }

    async fn scan(
        &self,
        bucket: &str,
        prefix: &[u8],
        after: Option<Vec<u8>>,
        limit: u32,
        include_tombstones: bool,
        consistency: Consistency,
    ) -> Result<ScanPage> {
        let req = ClientRequest::Scan {
            bucket: bucket.into(),
            prefix: prefix.to_vec(),
            after,
            limit,
            include_tombstones,
            consistency,
        };
        match self.request(req).await? {
            ClientReply::Page(p) => Ok(p),
            other => unexpected(other),
        }
    }

    async fn changes(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: u32,
    ) -> Result<ChangesPage> {
        match self
            .request(ClientRequest::Changes {
                bucket: bucket.into(),
                prefix: prefix.to_vec(),
                after_rev,
                limit,
                wait_ms: 0,
            })
            .await?
        {
            ClientReply::Changes(c) => Ok(c),
            other => unexpected(other),
        }
    }

    async fn bucket(&self, bucket: &str) -> Result<BucketInfo> {
        match self
            .request(ClientRequest::Bucket {
                bucket: bucket.into(),
                consistency: Consistency::Linearizable,
            })
            .await?
        {
            ClientReply::Bucket(b) => Ok(b),
            other => unexpected(other),
        }
    }

    async fn buckets(&self) -> Result<Vec<(String, BucketInfo)>> {
        match self
            .request(ClientRequest::Buckets {
                consistency: Consistency::Linearizable,
            })
            .await?
        {
            ClientReply::Buckets(b) => Ok(b),
            other => unexpected(other),
        }
    }

    /// The answering node's status.
    async fn status(&self) -> Result<NodeStatus> {
        match self.request(ClientRequest::Status).await? {
            ClientReply::Status(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Watches `bucket` under `prefix` from revision `from_rev` on (0 or 1: from the start):
    /// see [`Watch`].
    fn watch(&self, bucket: &str, prefix: &[u8], from_rev: u64) -> Watch<'_, Self>
    where
        Self: Sized,
    {
        Watch {
            kv: self,
            bucket: bucket.to_owned(),
            prefix: prefix.to_vec(),
            after_rev: from_rev.saturating_sub(1),
            pending: VecDeque::new(),
            compacted: None,
        }
    }

    /// Every member's own status.
    async fn cluster_status(&self) -> Result<ClusterStatus> {
        match self.request(ClientRequest::ClusterStatus).await? {
            ClientReply::ClusterStatus(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Starts a GC job (`dry_run`: report what would be purged, purge nothing); `Busy` with
    /// the running job's id if one runs already.
    async fn gc_run(&self, dry_run: bool, min_age_ms: Option<u64>) -> Result<JobId> {
        match self
            .request(ClientRequest::GcRun {
                dry_run,
                min_age_ms,
            })
            .await?
        {
            ClientReply::GcStarted(job) => Ok(job),
            other => unexpected(other),
        }
    }

    /// The running GC job and the last `limit` job records, newest first.
    async fn gc_status(&self, limit: u32) -> Result<GcStatus> {
        match self.request(ClientRequest::GcStatus { limit }).await? {
            ClientReply::GcStatus(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Compacts the state file of the node this request reaches (a [`Client`](crate::Client)
    /// of one endpoint reaches that node).
    async fn compact_node(&self) -> Result<NodeCompacted> {
        match self.request(ClientRequest::CompactNode).await? {
            ClientReply::Compacted(c) => Ok(c),
            other => unexpected(other),
        }
    }

    /// Checks the store of the node this request reaches.
    async fn check_node(&self) -> Result<NodeCheck> {
        match self.request(ClientRequest::CheckNode).await? {
            ClientReply::Checked(c) => Ok(c),
            other => unexpected(other),
        }
    }

    /// Starts pausing `bucket` to `archive` (`file:///dir`, a plain path, or `s3://bucket/p`
    /// when built with `s3`); returns once writes to it answer `BucketPaused`.
    async fn start_pause(&self, bucket: &str, archive: &str) -> Result<OpId> {
        match self
            .request(ClientRequest::PauseBucket {
                bucket: bucket.into(),
                archive: archive.into(),
            })
            .await?
        {
            ClientReply::OpStarted(op) => Ok(op),
            other => unexpected(other),
        }
    }

    /// Starts resuming paused `bucket` from its archive, or from `archive` if it moved.
    async fn start_resume(&self, bucket: &str, archive: Option<&str>) -> Result<OpId> {
        match self
            .request(ClientRequest::ResumeBucket {
                bucket: bucket.into(),
                archive: archive.map(str::to_owned),
            })
            .await?
        {
            ClientReply::OpStarted(op) => Ok(op),
            other => unexpected(other),
        }
    }

    /// A bucket's hibernation: its state, its last operation, the running one's progress.
    async fn hibernation(&self, bucket: &str) -> Result<HibernationStatus> {
        match self
            .request(ClientRequest::Hibernation {
                bucket: bucket.into(),
            })
            .await?
        {
            ClientReply::Hibernation(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Waits for operation `op` on `bucket` to end, showing each status polled to
    /// `on_progress`; `Ok` with the final status when it succeeded, `Archive` with the reason
    /// when it was rolled back.
    async fn hibernation_wait(
        &self,
        bucket: &str,
        op: OpId,
        mut on_progress: impl FnMut(&HibernationStatus),
    ) -> Result<HibernationStatus> {
        loop {
            let status = self.hibernation(bucket).await?;
            on_progress(&status);
            match &status.record {
                Some(r) if r.op == op && r.phase == Phase::Done => return Ok(status),
                Some(r) if r.op == op && r.phase == Phase::RolledBack => {
                    return Err(Error::Archive(format!(
                        "{} of bucket {bucket:?} (op {op}) rolled back: {}",
                        r.kind.as_str(),
                        r.error.as_deref().unwrap_or("no reason recorded")
                    )));
                }
                Some(r) if r.op > op => {
                    return Err(Error::Busy(format!(
                        "operation {op} on bucket {bucket:?} was replaced by {}",
                        r.op
                    )));
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Pauses `bucket` to `archive` and waits until it is `Paused` (see [`Kv::start_pause`]).
    async fn pause_bucket(&self, bucket: &str, archive: &str) -> Result<HibernationStatus> {
        let op = self.start_pause(bucket, archive).await?;
        self.hibernation_wait(bucket, op, |_| {}).await
    }

    /// Resumes `bucket` and waits until it is `Active` with all its records again.
    async fn resume_bucket(
        &self,
        bucket: &str,
        archive: Option<&str>,
    ) -> Result<HibernationStatus> {
        let op = self.start_resume(bucket, archive).await?;
        self.hibernation_wait(bucket, op, |_| {}).await
    }

    /// Takes a backup of the whole store, consistent as of a moment after every write
    /// acknowledged before the call, and writes it to `path` (through `path.partial`, checked
    /// whole and made durable before it is renamed). `on_bytes(done, total)` sees the
    /// download. `metakv restore` makes a new cluster's first node from it.
    async fn backup(
        &self,
        path: &std::path::Path,
        mut on_bytes: impl FnMut(u64, u64),
    ) -> Result<BackupInfo>
    where
        Self: Sized,
    {
        let info = crate::backup::begin(self).await?;
        on_bytes(0, info.bytes);
        crate::backup::pull(self, &info, path, |done| on_bytes(done, info.bytes)).await?;
        Ok(info)
    }

    /// Waits for job `job` to end (polling every `poll`) and returns its record. A job that
    /// has no record among the last [`GC_WAIT_RECORDS`] is refused at once: every id `gc_run`
    /// answers has a committed record, so such an id never started or is long over.
    async fn gc_wait(&self, job: JobId, poll: std::time::Duration) -> Result<JobRecord> {
        loop {
            let status = self.gc_status(GC_WAIT_RECORDS).await?;
            match status.jobs.into_iter().find(|r| r.id == job) {
                Some(r) if r.outcome.is_finished() => return Ok(r),
                Some(_) => tokio::time::sleep(poll).await,
                None => {
                    return Err(Error::invalid(format!(
                        "GC job {job} has no record among the last {GC_WAIT_RECORDS} jobs: it \
                         never started, or it ended long ago (see `metakv gc status`)"
                    )));
                }
            }
        }
    }

    /// Adds a node: learner first, promoted to voter once it has caught up.
    async fn add_node(&self, id: u64, addr: &str) -> Result<()> {
        match self
            .request(ClientRequest::Join {
                id,
                addr: addr.into(),
            })
            .await?
        {
            ClientReply::Done => Ok(()),
            other => unexpected(other),
        }
    }

    async fn remove_node(&self, id: u64) -> Result<()> {
        match self.request(ClientRequest::Remove { id }).await? {
            ClientReply::Done => Ok(()),
            other => unexpected(other),
        }
    }
}

/// What a watcher sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key's record as of its latest change (a put, or a delete: `record.deleted`).
    Change { key: Vec<u8>, record: Record },
    /// Changes after the watcher's cursor were purged (at or below `floor`): re-list the bucket,
    /// then watch again from the listing's revision.
    Compacted { floor: u64 },
}

/// A watch over one bucket, from the node it was opened on.
///
/// Events come in revision order, each key at its latest revision: a key changed twice before
/// the watcher reads shows once, at the later revision (the store keeps one version per key).
/// The node serves it from its own copy, so a leader change does not interrupt it.
#[derive(Debug)]
pub struct Watch<'a, K: Kv> {
    kv: &'a K,
    bucket: String,
    prefix: Vec<u8>,
    after_rev: u64,
    pending: VecDeque<(Vec<u8>, Record)>,
    compacted: Option<u64>,
}

/// How long one long poll of a watch waits on the node.
const WATCH_POLL_MS: u32 = 1000;

impl<K: Kv> Watch<'_, K> {
    /// The next event, waiting for one as long as it takes.
    pub async fn next(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(floor) = self.compacted {
                return Ok(WatchEvent::Compacted { floor });
            }
            if let Some((key, record)) = self.pending.pop_front() {
                return Ok(WatchEvent::Change { key, record });
            }
            let req = ClientRequest::Changes {
                bucket: self.bucket.clone(),
                prefix: self.prefix.clone(),
                after_rev: self.after_rev,
                limit: 1000,
                wait_ms: WATCH_POLL_MS,
            };
            match self.kv.request(req).await? {
                ClientReply::Changes(ChangesPage::Events {
                    events,
                    next_after_rev,
                    ..
                }) => {
                    self.after_rev = next_after_rev;
                    self.pending.extend(events);
                }
                ClientReply::Changes(ChangesPage::Compacted { floor }) => {
                    self.compacted = Some(floor)
                }
                other => return unexpected(other),
            }
        }
    }

    /// The revision the watch has reported up to.
    pub fn cursor(&self) -> u64 {
        self.after_rev
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
