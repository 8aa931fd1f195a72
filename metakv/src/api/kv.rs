//! [`Kv`]: the typed client operations, written once over `request`, and the watch built on
//! them.

use super::*;

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

    /// Creates `bucket` unless it exists: `true` if this call created it. Safe to call at
    /// every start of an application, and to retry.
    ///
    /// # Errors
    ///
    /// As [`Kv::create_bucket`], except that a bucket that exists already is `Ok(false)`.
    async fn create_bucket_if_absent(&self, bucket: &str) -> Result<bool> {
        match self.create_bucket(bucket).await {
            Ok(()) => Ok(true),
            Err(e) if e.rejection_kind() == Some(metakv_raft::RejectionKind::BucketExists) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
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
        let info = super::backup::begin(self).await?;
        on_bytes(0, info.bytes);
        super::backup::pull(self, &info, path, |done| on_bytes(done, info.bytes)).await?;
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
                incarnation: None,
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

    /// Manages users and roles (an admin's request; see [`crate::api::access`]).
    ///
    /// # Errors
    ///
    /// `Denied` for a caller without the admin role; `Rejected` (kind `Invalid`) for a bad
    /// or unknown name, an existing user or role, a role the user does not hold; `Busy` when
    /// another change to the same user or role came first.
    async fn access(&self, request: super::AccessRequest) -> Result<super::AccessReply> {
        match self.request(ClientRequest::Access(request)).await? {
            ClientReply::Access(reply) => Ok(reply),
            other => unexpected(other),
        }
    }

    /// Makes a join token that lets one new node join within `ttl` (at most
    /// [`crate::TOKEN_TTL_MAX`]): `metakv serve --join ADDR --token TOKEN`. The token is shown
    /// once; the cluster keeps only its hash.
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) for a ttl out of range or an insecure cluster;
    /// `Unavailable` without a leader.
    async fn join_token(&self, ttl: std::time::Duration) -> Result<super::JoinTokenInfo> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self.request(ClientRequest::JoinToken { ttl_ms }).await? {
            ClientReply::JoinToken(info) => Ok(info),
            other => unexpected(other),
        }
    }

    /// Revokes join token `id` (its `JoinTokenInfo::id`), used or not: a node that has not
    /// enrolled with it yet cannot.
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) for an unknown id.
    async fn revoke_join_token(&self, id: &str) -> Result<()> {
        match self
            .request(ClientRequest::RevokeJoinToken { id: id.to_owned() })
            .await?
        {
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
