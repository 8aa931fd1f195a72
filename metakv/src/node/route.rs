//! Client requests: answered on this node, or through the leader when it must answer.

use super::*;

/// The longest a watch poll may wait (`ClientRequest::Changes { wait_ms }`): a poll holds a
/// pin on its bucket's tombstones for its wait, so a client must not choose an endless one.
pub const WATCH_WAIT_MS_MAX: u32 = 60_000;
/// Longest wait between two attempts of a request that found no leader (see `Node::route`).
pub(super) const ROUTE_RETRY_MAX: Duration = Duration::from_millis(50);

impl Node {
    /// Answers a client request; `from` is the node that forwarded it (it is not forwarded
    /// again), `None` for a caller of this node; `acting` is whom it acts for (authorised).
    pub(crate) async fn handle(
        &self,
        request: ClientRequest,
        from: Option<u64>,
        acting: &Acting,
    ) -> Result<ClientReply> {
        if let Some(why) = self.failure() {
            return Err(Error::Storage(format!(
                "node {} stopped after a storage failure: {why}",
                self.inner.core.id
            )));
        }
        if from.is_none()
            && let Some(message) = internal_only(&request)
        {
            return Err(Error::Rejected(metakv_raft::Rejection {
                kind: metakv_raft::RejectionKind::Invalid,
                message,
            }));
        }
        self.route(request, from, acting).await
    }

    /// Answers here, or through the leader when it must answer. A refused attempt is retried when
    /// this node's view of leadership changes, or after [`ROUTE_RETRY_MAX`].
    pub(super) async fn route(
        &self,
        request: ClientRequest,
        from: Option<u64>,
        acting: &Acting,
    ) -> Result<ClientReply> {
        let deadline = tokio::time::Instant::now() + self.inner.core.config.request_timeout;
        // Leadership as this node saw it when the last attempt was refused: the next attempt
        // waits until it changes (an election ends), not for a fixed time.
        let mut leadership = self.inner.core.raft.server_metrics();
        loop {
            drop(leadership.borrow_and_update());
            match self.try_handle(&request, acting).await {
                Err(Redirect(leader)) if from.is_some() => {
                    return Err(Error::NotLeader {
                        leader: leader.map(|(id, _)| id),
                    });
                }
                Err(Redirect(Some((id, addr)))) if id != self.inner.core.id => {
                    // A join waits on the leader for its membership turn and for the learner
                    // to catch up, each up to `request_timeout`, and then for its promotion.
                    let ttl = match request {
                        ClientRequest::Join { .. } => self.inner.core.config.request_timeout * 3,
                        _ => self.inner.core.config.request_timeout,
                    };
                    let forwarded = acting.wrap(&request);
                    match self
                        .inner
                        .core
                        .pool
                        .client_call(&addr, &forwarded, ttl)
                        .await
                    {
                        Ok(ClientReply::Error(Error::NotLeader { .. })) => {}
                        Ok(reply) => return Ok(reply),
                        Err(e) if e.is_connect() => {}
                        // Forwarded, and no answer: the leader may have applied a write.
                        Err(e) => {
                            return Err(request.failed_after_sending(format!(
                                "the leader (node {id}) did not answer: {e}"
                            )));
                        }
                    }
                }
                Err(Redirect(_)) => {}
                Ok(reply) => return reply,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable(format!(
                    "no leader answered within {:?}",
                    self.inner.core.config.request_timeout
                )));
            }
            if let Some(why) = self.failure() {
                return Err(Error::Storage(format!(
                    "node {} stopped after a storage failure: {why}",
                    self.inner.core.id
                )));
            }
            // A vote, state or leader change wakes this at once; the bound covers a leader
            // that this node has not heard of yet but another has. Metrics that end (Raft
            // stopped) must not turn this into a busy loop.
            let wait = (deadline - now).min(ROUTE_RETRY_MAX);
            let woke = tokio::time::timeout(wait, leadership.changed()).await;
            if matches!(woke, Ok(Err(_))) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One attempt on this node; `Redirect` when the leader must answer.
    pub(super) async fn try_handle(
        &self,
        request: &ClientRequest,
        acting: &Acting,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        // Matched by reference: only what an answer needs is copied, once per attempt.
        Ok(match request {
            ClientRequest::Write(op) => match op.validate(self.inner.core.config.value_bytes_max) {
                Err(e) => Err(Error::from_store(e)),
                Ok(()) if matches!(op, Op::CreateBucket { .. }) && self.buckets_full().await? => {
                    Err(Error::invalid(format!(
                        "this cluster holds {} buckets, its most (limits.buckets_max)",
                        self.inner.core.config.buckets_max
                    )))
                }
                Ok(()) => match self.inner.core.propose(op.clone()).await? {
                    // Proposed, then Raft stopped: the entry may have been committed.
                    Err(Error::Unavailable(why)) => Err(request.failed_after_sending(why)),
                    applied => applied.map(ClientReply::Applied),
                },
            },
            ClientRequest::Get {
                bucket,
                key,
                include_tombstones,
                consistency,
            } => {
                self.inner.core.linearize(*consistency).await?;
                let (bucket, key, include_tombstones) =
                    (bucket.clone(), key.clone(), *include_tombstones);
                self.inner
                    .core
                    .local(move |s| s.read()?.get(&bucket, &key, include_tombstones))
                    .await
                    .map(ClientReply::Record)
            }
            ClientRequest::Scan {
                bucket,
                prefix,
                after,
                limit,
                include_tombstones,
                consistency,
            } => {
                self.inner.core.linearize(*consistency).await?;
                let scan = Scan {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: *limit as usize,
                    include_tombstones: *include_tombstones,
                };
                let bucket = bucket.clone();
                self.inner
                    .core
                    .local(move |s| s.read()?.scan(&bucket, &scan))
                    .await
                    .map(|p| {
                        ClientReply::Page(ScanPage {
                            items: p.items,
                            next: p.next,
                        })
                    })
            }
            ClientRequest::Changes {
                bucket,
                prefix,
                after_rev,
                limit,
                wait_ms,
            } => {
                self.poll_changes(bucket, prefix, *after_rev, *limit, *wait_ms)
                    .await
            }
            ClientRequest::Bucket {
                bucket,
                consistency,
            } => {
                self.inner.core.linearize(*consistency).await?;
                let bucket = bucket.clone();
                self.inner
                    .core
                    .local(move |s| s.bucket(&bucket))
                    .await
                    .map(ClientReply::Bucket)
            }
            ClientRequest::Buckets { consistency } => {
                self.inner.core.linearize(*consistency).await?;
                self.inner
                    .core
                    .local(|s| s.read()?.buckets())
                    .await
                    .map(ClientReply::Buckets)
            }
            ClientRequest::Status => Ok(ClientReply::Status(self.node_status())),
            ClientRequest::GcRun { .. }
            | ClientRequest::GcStatus { .. }
            | ClientRequest::ClusterStatus
            | ClientRequest::CompactNode
            | ClientRequest::CheckNode
            | ClientRequest::PauseBucket { .. }
            | ClientRequest::ResumeBucket { .. }
            | ClientRequest::Hibernation { .. }
            | ClientRequest::BackupBegin
            | ClientRequest::BackupChunk { .. }
            | ClientRequest::BackupEnd { .. }
            | ClientRequest::Join { .. }
            | ClientRequest::Remove { .. }
            | ClientRequest::JoinToken { .. }
            | ClientRequest::RevokeJoinToken { .. }
            | ClientRequest::Enroll { .. }
            | ClientRequest::Access(_)
            | ClientRequest::ArchiveVisible { .. } => return self.try_admin(request, acting).await,
            ClientRequest::OnBehalf { .. } => Err(Error::invalid(
                "a request on a user's behalf is taken only from a member node",
            )),
        })
    }

    /// A watch's poll: the changes after `after_rev`, waiting up to `wait_ms` for the next
    /// applied entry when there are none yet.
    pub(super) async fn poll_changes(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: u32,
        wait_ms: u32,
    ) -> Result<ClientReply> {
        if wait_ms > WATCH_WAIT_MS_MAX {
            return Err(Error::invalid(format!(
                "wait_ms {wait_ms} is over the limit of {WATCH_WAIT_MS_MAX}"
            )));
        }
        let applied = self.inner.core.applied_index();
        if wait_ms > 0 {
            self.inner
                .gc
                .state
                .pin(bucket, after_rev, Duration::from_millis(wait_ms.into()));
        }
        let mut page = self.changes_page(bucket, prefix, after_rev, limit).await;
        let empty = matches!(&page, Ok(ChangesPage::Events { events, .. }) if events.is_empty());
        if wait_ms > 0 && empty {
            // Nothing yet: wait for the next applied entry, or for the poll to run out.
            let wait = self
                .inner
                .core
                .raft
                .wait(Some(Duration::from_millis(wait_ms.into())));
            if wait
                .applied_index_at_least(Some(applied + 1), "watch")
                .await
                .is_ok()
            {
                page = self.changes_page(bucket, prefix, after_rev, limit).await;
            }
        }
        page.map(ClientReply::Changes)
    }

    /// One attempt at an operator's request: GC, hibernation, backup, checks, membership.
    pub(super) async fn try_admin(
        &self,
        request: &ClientRequest,
        acting: &Acting,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        Ok(match request.clone() {
            ClientRequest::GcRun {
                dry_run,
                min_age_ms,
            } => {
                self.lead_here()?;
                match self.inner.gc.state.run(dry_run, min_age_ms).await {
                    Ok(Ok(job)) => Ok(ClientReply::GcStarted(job)),
                    Ok(Err(Error::NotLeader { .. })) => return Err(Redirect(None)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::Unavailable("the node is shutting down".into())),
                }
            }
            ClientRequest::GcStatus { limit } => {
                self.inner.core.linearize(Consistency::Linearizable).await?;
                let running = self.inner.gc.state.progress();
                self.inner
                    .gc
                    .gc_records(limit as usize)
                    .await
                    .map(|jobs| ClientReply::GcStatus(GcStatus { running, jobs }))
            }
            ClientRequest::ClusterStatus => {
                Ok(ClientReply::ClusterStatus(self.cluster_status_now().await))
            }
            ClientRequest::CompactNode => {
                let node = self.inner.core.id;
                self.inner
                    .core
                    .compact_state()
                    .await
                    .map(|(bytes_before, bytes_after)| {
                        ClientReply::Compacted(NodeCompacted {
                            node,
                            bytes_before,
                            bytes_after,
                        })
                    })
            }
            ClientRequest::PauseBucket { bucket, archive } => {
                self.lead_here()?;
                leader_only(self.inner.hibernation.start_pause(&bucket, &archive).await)?
                    .map(ClientReply::OpStarted)
            }
            ClientRequest::ResumeBucket { bucket, archive } => {
                self.lead_here()?;
                leader_only(
                    self.inner
                        .hibernation
                        .start_resume(&bucket, archive.as_deref())
                        .await,
                )?
                .map(ClientReply::OpStarted)
            }
            ClientRequest::Hibernation { bucket } => {
                self.lead_here()?;
                self.inner.core.linearize(Consistency::Linearizable).await?;
                self.inner
                    .hibernation
                    .hibernation_status(&bucket)
                    .await
                    .map(ClientReply::Hibernation)
            }
            ClientRequest::BackupBegin => {
                self.inner.core.linearize(Consistency::Linearizable).await?;
                self.inner
                    .backups
                    .begin(&self.inner.core, acting.user())
                    .await
                    .map(ClientReply::Backup)
            }
            ClientRequest::BackupChunk { node, id, offset } => {
                if node != self.inner.core.id {
                    return Ok(self.on_member(node, request, acting).await);
                }
                self.inner
                    .backups
                    .chunk(&self.inner.core, id, offset, acting.user())
                    .await
                    .map(ClientReply::Bytes)
            }
            ClientRequest::BackupEnd { node, id } => {
                if node != self.inner.core.id {
                    return Ok(self.on_member(node, request, acting).await);
                }
                self.inner
                    .backups
                    .end(&self.inner.core, id, acting.user())
                    .map(|()| ClientReply::Done)
            }
            ClientRequest::CheckNode => {
                let node = self.inner.core.id;
                self.inner
                    .core
                    .exclusive(move |store| store.check())
                    .await
                    .map(|report| ClientReply::Checked(NodeCheck::from_report(node, &report)))
            }
            ClientRequest::Join {
                id,
                addr,
                incarnation,
            } => return self.join(id, addr, incarnation).await,
            ClientRequest::Remove { id } => return self.remove(id).await,
            ClientRequest::JoinToken { ttl_ms } => return self.create_join_token(ttl_ms).await,
            ClientRequest::RevokeJoinToken { id } => return self.revoke_join_token(&id).await,
            ClientRequest::Enroll { token, id, addr } => {
                return self.enroll_node(&token, id, &addr).await;
            }
            ClientRequest::Access(request) => return self.access(request).await,
            ClientRequest::ArchiveVisible { location, marker } => self
                .inner
                .hibernation
                .marker_visible(&location, &marker)
                .await
                .map(|()| ClientReply::Done),
            ClientRequest::Write(_)
            | ClientRequest::Get { .. }
            | ClientRequest::Scan { .. }
            | ClientRequest::Changes { .. }
            | ClientRequest::Bucket { .. }
            | ClientRequest::Buckets { .. }
            | ClientRequest::Status
            | ClientRequest::OnBehalf { .. } => unreachable!("answered by try_handle"),
        })
    }

    /// Passes `request` on to member `node`, for what only that node can answer.
    pub(super) async fn on_member(
        &self,
        node: u64,
        request: &ClientRequest,
        acting: &Acting,
    ) -> Result<ClientReply> {
        let addr = {
            let metrics = self.inner.core.raft.metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .get_node(&node)
                .map(|n| n.addr.clone())
        };
        let Some(addr) = addr else {
            return Err(Error::invalid(format!("node {node} is not a member")));
        };
        match self
            .inner
            .core
            .pool
            .client_call(
                &addr,
                &acting.wrap(request),
                self.inner.core.config.request_timeout,
            )
            .await
        {
            Ok(ClientReply::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn changes_page(
        &self,
        bucket: &str,
        prefix: &[u8],
        after_rev: u64,
        limit: u32,
    ) -> Result<ChangesPage> {
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_vec());
        let changes = self
            .inner
            .core
            .local(move |s| {
                s.read()?
                    .changes(&bucket, &prefix, after_rev, limit as usize)
            })
            .await?;
        Ok(match changes {
            Changes::Events {
                events,
                next_after_rev,
                more,
            } => ChangesPage::Events {
                events: events.into_iter().map(|c| (c.key, c.record)).collect(),
                next_after_rev,
                more,
            },
            Changes::Compacted { floor } => ChangesPage::Compacted { floor },
        })
    }

    /// Whether this node's copy holds `limits.buckets_max` buckets (`_sys` not counted).
    /// Counted on the leader only (a follower passes the create on): a follower's copy may
    /// not have applied a drop the leader has acknowledged.
    async fn buckets_full(&self) -> std::result::Result<bool, Redirect> {
        self.lead_here()?;
        let max = self.inner.core.config.buckets_max;
        let count = self
            .inner
            .core
            .local(|s| s.read()?.buckets())
            .await
            .map(|b| b.iter().filter(|(name, _)| name != SYS_BUCKET).count());
        // A failed read refuses nothing here; the create itself will say what is wrong.
        Ok(count.is_ok_and(|n| n >= max))
    }

    /// `Ok` if this node leads; otherwise a redirect to the leader it knows of.
    pub(super) fn lead_here(&self) -> std::result::Result<(), Redirect> {
        self.inner
            .core
            .leading()
            .map(|_| ())
            .map_err(Redirect::from)
    }
}

/// A leader-only answer: `NotLeader` (leadership moved while it ran) becomes a redirect.
pub(super) fn leader_only<T>(r: Result<T>) -> std::result::Result<Result<T>, Redirect> {
    match r {
        Err(Error::NotLeader { .. }) => Err(Redirect(None)),
        other => Ok(other),
    }
}

/// Why a caller may not send `request` itself, if it may not: writes to `_sys`, and the
/// hibernation steps, which only the node's own pause and resume propose (in order, with
/// their records), and a member's archive check.
pub(super) fn internal_only(request: &ClientRequest) -> Option<String> {
    let op = match request {
        ClientRequest::Write(op) => op,
        ClientRequest::ArchiveVisible { .. } => {
            return Some("only a member node asks for an archive check".to_owned());
        }
        _ => return None,
    };
    let sys = match op {
        Op::SetBucketState { .. }
        | Op::DropBucketData { .. }
        | Op::Restore { .. }
        | Op::Hibernate { .. } => {
            return Some(
                "bucket states change only through pause_bucket and resume_bucket".to_owned(),
            );
        }
        Op::CreateBucket { bucket } | Op::DropBucket { bucket } => bucket == SYS_BUCKET,
        Op::Put { bucket, .. } | Op::Delete { bucket, .. } => bucket == SYS_BUCKET,
        Op::Purge { items } => items.iter().any(|i| i.bucket == SYS_BUCKET),
    };
    sys.then(|| format!("bucket {SYS_BUCKET:?} is reserved for metakv's own records"))
}

impl Kv for Node {
    /// Answers as a trusted caller: the embedded API is in the process that runs the node.
    /// [`Node::on_behalf_of`] answers as a user.
    async fn request(&self, request: ClientRequest) -> Result<ClientReply> {
        self.handle(request, None, &Acting::Trusted).await
    }
}

/// A [`Node`] answering for a user (see [`Node::on_behalf_of`]).
#[derive(Debug, Clone)]
pub struct OnBehalfOf {
    node: Node,
    user: String,
}

impl OnBehalfOf {
    /// The user it answers for.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Node {
    /// This node's API for requests made on `user`'s behalf: each one is authorised against
    /// the user's roles, as the user's own connection would be, and fails with
    /// [`Error::Denied`] when they do not allow it (a user that does not exist has no roles).
    /// A request this node passes on to the leader carries the user, and the leader checks it
    /// again.
    pub fn on_behalf_of(&self, user: &str) -> OnBehalfOf {
        OnBehalfOf {
            node: self.clone(),
            user: user.to_owned(),
        }
    }
}

impl Kv for OnBehalfOf {
    async fn request(&self, request: ClientRequest) -> Result<ClientReply> {
        let node = &self.node;
        let caller = Caller {
            node: None,
            peer: Peer::User(self.user.clone()),
            token: None,
        };
        let (request, acting) = node
            .authorize(&caller, request, &node.inner.denials)
            .await?;
        node.handle(request, None, &acting).await
    }
}
