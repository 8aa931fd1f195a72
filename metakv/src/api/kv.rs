//! [`Kv`]: the typed client operations, written once over `request`, and the watch built on
//! them.

use super::*;

/// The typed client operations, over any way of reaching a cluster: a [`Node`](crate::Node)
/// in this process, [`Node::on_behalf_of`](crate::Node::on_behalf_of) for a user, or a
/// [`Client`](crate::Client) over TLS.
///
/// ```no_run
/// use metakv::{Applied, Expect, Kv};
///
/// async fn grant(kv: &impl Kv) -> metakv::Result<()> {
///     kv.create_bucket_if_absent("users").await?;
///     match kv.put("users", b"ada", b"admin", Expect::Absent).await? {
///         Applied::Written { rev } => println!("ada at revision {rev}"),
///         Applied::Conflict { current } => println!("ada exists, at {current:?}"),
///         _ => {}
///     }
///     Ok(())
/// }
/// ```
///
/// # Errors
///
/// Every method may fail with:
/// - [`Error::Unavailable`]: no node or leader answered in time; nothing was applied (a
///   request that was never sent, or a read).
/// - [`Error::Ambiguous`]: a write was sent and no answer came back; it may have been
///   applied. A write with an expectation (`Expect::Rev`, `Expect::Absent`) is safe to send
///   again.
/// - [`Error::Denied`]: the caller's roles do not grant the request (users and roles).
/// - [`Error::Rejected`]: refused before anything changed; its
///   [`kind`](crate::RejectionKind) says why (`Invalid` for bad input, `BucketNotFound`,
///   `BucketPaused`, ...).
/// - [`Error::Storage`]: the node's files failed, and that node stops.
///
/// The methods below list what else they answer.
#[allow(async_fn_in_trait)]
pub trait Kv {
    /// Sends one request and waits for its reply: what every other method is written over.
    async fn request(&self, request: ClientRequest) -> Result<ClientReply>;

    /// Applies any op through the log, and answers what applying it answered.
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) for an op only the node proposes itself (the hibernation
    /// steps, writes to `_sys`).
    async fn write(&self, op: Op) -> Result<Applied> {
        match self.request(ClientRequest::Write(op)).await? {
            ClientReply::Applied(a) => Ok(a),
            other => unexpected(other),
        }
    }

    /// Creates `bucket`.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketExists` if it exists, `Invalid` for a name that is not 1 to
    /// 64 of `a-z0-9_-` (starting with a letter or digit) or past `limits.buckets_max`.
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

    /// Drops `bucket` and everything in it.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketNotFound`, or `BucketPaused` for a paused bucket (resume it
    /// first).
    async fn drop_bucket(&self, bucket: &str) -> Result<Applied> {
        self.write(Op::DropBucket {
            bucket: bucket.to_owned(),
        })
        .await
    }

    /// Writes `value` under `key` if `expect` holds; `Applied::Written { rev }` or
    /// `Applied::Conflict { current }` (nothing written).
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketNotFound`, `BucketPaused`, or `Invalid` for an empty key,
    /// a key over 1 KiB or a value over the node's `limits.value_bytes_max`.
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
    /// record was there, `Applied::Conflict` if `expect` failed.
    ///
    /// # Errors
    ///
    /// As [`Kv::put`].
    async fn delete(&self, bucket: &str, key: &[u8], expect: Expect) -> Result<Applied> {
        self.write(Op::Delete {
            bucket: bucket.into(),
            key: key.to_vec(),
            expect,
        })
        .await
    }

    /// The key's live record, linearizably (every write acknowledged before the call is
    /// seen); `None` if there is none.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketNotFound` or `BucketPaused`.
    async fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Record>> {
        self.get_with(bucket, key, Consistency::Linearizable, false)
            .await
    }

    /// The key's record at `consistency` ([`Consistency::Local`] reads the answering node's
    /// copy, which may lag); with `include_tombstones`, a deleted key's tombstone too.
    ///
    /// # Errors
    ///
    /// As [`Kv::get`].
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

    /// Up to `limit` records of `bucket` under `prefix`, in key order, after key `after`;
    /// [`ScanPage::next`] is the `after` of the next page (`None`: nothing follows).
    ///
    /// # Errors
    ///
    /// As [`Kv::get`]; `Rejected` (kind `Invalid`) for a `limit` over the store's page limit.
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

    /// One page of `bucket`'s changes under `prefix` after revision `after_rev`, from the
    /// answering node's copy: each changed key at its latest revision, or
    /// [`ChangesPage::Compacted`] when GC has purged past `after_rev`. [`Kv::watch`] is
    /// built on it.
    ///
    /// # Errors
    ///
    /// As [`Kv::get`].
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

    /// `bucket`'s state and its live record and tombstone counts.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketNotFound`.
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

    /// Every bucket (`_sys`, metakv's own, included) and its [`BucketInfo`].
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

    /// The answering node's status: its role, term, leader, applied index, members.
    async fn status(&self) -> Result<NodeStatus> {
        match self.request(ClientRequest::Status).await? {
            ClientReply::Status(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Watches `bucket` under `prefix` from revision `from_rev` on (0 or 1: from the start):
    /// see [`Watch`]. To follow changes from now, start at the answering node's
    /// [`NodeStatus::applied`] + 1.
    ///
    /// Nothing is sent until [`Watch::next`], which answers the errors of [`Kv::changes`].
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

    /// Every member's own status, as each one reports it (a member that does not answer has
    /// its error in [`MemberReport::status`]).
    async fn cluster_status(&self) -> Result<ClusterStatus> {
        match self.request(ClientRequest::ClusterStatus).await? {
            ClientReply::ClusterStatus(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Starts a tombstone GC job on the leader (`dry_run`: report what would be purged,
    /// purge nothing; `min_age_ms`: collect tombstones at least this old, instead of the
    /// cluster's `gc.min_age`), and answers its id; [`Kv::gc_wait`] waits for it.
    ///
    /// # Errors
    ///
    /// `Busy` with the running job's id if one runs already; `Denied` without the admin role.
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
    ///
    /// # Errors
    ///
    /// `Denied` without the admin role.
    async fn gc_status(&self, limit: u32) -> Result<GcStatus> {
        match self.request(ClientRequest::GcStatus { limit }).await? {
            ClientReply::GcStatus(s) => Ok(s),
            other => unexpected(other),
        }
    }

    /// Compacts the state file of the node this request reaches (a [`Client`](crate::Client)
    /// of one endpoint reaches that node); that node's requests wait meanwhile.
    ///
    /// # Errors
    ///
    /// `Storage` if the file cannot be rebuilt (no room for the copy); `Denied` without the
    /// admin role.
    async fn compact_node(&self) -> Result<NodeCompacted> {
        match self.request(ClientRequest::CompactNode).await? {
            ClientReply::Compacted(c) => Ok(c),
            other => unexpected(other),
        }
    }

    /// Checks the store of the node this request reaches: redb's page checksums, every
    /// record's crc and contents, every index and counter. Problems are in the answer
    /// ([`NodeCheck::ok`] is false), not an error.
    ///
    /// # Errors
    ///
    /// `Denied` without the admin role.
    async fn check_node(&self) -> Result<NodeCheck> {
        match self.request(ClientRequest::CheckNode).await? {
            ClientReply::Checked(c) => Ok(c),
            other => unexpected(other),
        }
    }

    /// Starts pausing `bucket` to `archive` (`file:///dir`, a plain path, or `s3://bucket/p`
    /// when built with `s3`); returns once writes to it answer `BucketPaused`.
    /// [`Kv::hibernation_wait`] waits for the pause to end.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `Invalid` for a location under none of the leader's archive
    /// roots, or a local one not the same directory on every voter; `BucketState` if the
    /// bucket is not active; `Busy` if an operation runs on it; `Archive` if the location
    /// cannot be opened.
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

    /// Starts resuming paused `bucket` from its archive, or from `archive` if it moved;
    /// returns once the bucket is `Resuming`.
    ///
    /// # Errors
    ///
    /// As [`Kv::start_pause`] (kind `BucketState` if it is not paused), and `Archive` when
    /// the manifest or archive is missing, damaged, of another bucket, or the data dir lacks
    /// room: the bucket stays paused.
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
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `BucketNotFound`.
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
    ///
    /// # Errors
    ///
    /// `Archive` for an operation rolled back (the bucket is as it was); `Busy` if another
    /// operation replaced it.
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
    ///
    /// # Errors
    ///
    /// Those of [`Kv::start_pause`] and [`Kv::hibernation_wait`].
    async fn pause_bucket(&self, bucket: &str, archive: &str) -> Result<HibernationStatus> {
        let op = self.start_pause(bucket, archive).await?;
        self.hibernation_wait(bucket, op, |_| {}).await
    }

    /// Resumes `bucket` and waits until it is `Active` with all its records again.
    ///
    /// # Errors
    ///
    /// Those of [`Kv::start_resume`] and [`Kv::hibernation_wait`].
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
    ///
    /// # Errors
    ///
    /// `Busy` when the leader holds its most backups (two per user, four in all); `Archive`
    /// when the file arrived damaged or cannot be written (no `path` is left); `Denied`
    /// without the admin role.
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
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) for such an id; those of [`Kv::gc_status`].
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

    /// Adds node `id` at `addr`: learner first, promoted to voter once it has caught up.
    /// (A new node of a secure cluster joins by itself with a join token instead:
    /// [`NodeConfig::join_token`](crate::NodeConfig::join_token).)
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) for an id that is a voter already; `Unavailable` if the
    /// node did not catch up within `request_timeout` (it is removed again); `Busy` while
    /// another membership change runs; `Denied` without the admin role.
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

    /// Removes node `id` from the cluster.
    ///
    /// # Errors
    ///
    /// `Rejected` with kind `NotFound` if `id` is not a member; `Busy` while another
    /// membership change runs; `Denied` without the admin role.
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
    /// `Denied` for a caller without the admin role; `Rejected` with kind `Invalid` for a bad
    /// name or a change to the built-in `admin`, `NotFound` for an unknown user or role or a
    /// role the user does not hold, `Exists` for an existing user or role; `Busy` when
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
