//! A pause and a resume, step by step; each step is an `Op::Hibernate` entry that expects
//! the record of the step before.

use super::*;
use metakv_raft::server::free_bytes;

pub(super) fn bucket_state_err(bucket: &str, state: BucketState, needed: &str) -> Error {
    Error::Rejected(metakv_raft::Rejection {
        kind: metakv_raft::RejectionKind::BucketState,
        message: format!("bucket {bucket:?} is {state}; this needs it {needed}"),
    })
}

impl Hibernation {
    /// What a pause and a resume check first, on the leader: this node leads (and has
    /// applied everything committed before), no operation runs on `bucket`, and the bucket is
    /// in `needed`. Answers the operation's registration and the bucket's record.
    async fn begin_op(
        &self,
        bucket: &str,
        kind: OpKind,
        needed: BucketState,
    ) -> Result<(Registration, Option<(HibernationRecord, u64)>)> {
        let term = self.leading_term()?;
        self.core
            .linearize(crate::api::Consistency::Linearizable)
            .await
            .map_err(|_| Error::NotLeader { leader: None })?;
        let reg = self.reserve(bucket, kind, term)?;
        let (state, record) = self.hibernation_of(bucket).await?;
        if state != needed {
            return Err(bucket_state_err(bucket, state, needed.as_str()));
        }
        Ok((reg, record))
    }

    /// Starts pausing `bucket` to the archive location `archive`, on the leader: the bucket
    /// is `Pausing` (writes answer `BucketPaused`) when this returns the operation's id.
    pub(crate) async fn start_pause(&self, bucket: &str, archive: &str) -> Result<OpId> {
        // The location is the server's choice: under one of its archive roots.
        crate::archives::check_location(archive, &self.state.config.archive_roots)
            .map_err(Error::invalid)?;
        let (reg, record) = self
            .begin_op(bucket, OpKind::Pause, BucketState::Active)
            .await?;
        self.confirm_visible(archive).await?;
        let (store, base) = self
            .state
            .config
            .archives
            .open(archive, true)
            .map_err(archive_err)?;
        let op = reg.op;
        let started = HibernationRecord::pause(op, bucket, archive, now_ms());
        let expect = record.map_or(Expect::Absent, |(_, rev)| Expect::Rev(rev));
        let rev = self
            .step(bucket, BucketState::Pausing, false, &started, expect)
            .await?;
        tracing::info!(%bucket, %op, %archive, "pause started");
        let progress = self.progress_of(&reg);
        let node = self.clone();
        let b = bucket.to_owned();
        self.spawn_op(reg, async move {
            let outcome = node
                .pause_steps(&b, &store, &base, &started, rev, &progress)
                .await;
            node.end_op(&b, &started, rev, outcome).await;
        });
        Ok(op)
    }

    /// Export, manifest, read back and verify, drop: `Ok(manifest)` once the bucket is
    /// `Paused`.
    pub(super) async fn pause_steps(
        &self,
        bucket: &str,
        store: &Arc<dyn ObjectStore>,
        base: &ObjectPath,
        record: &HibernationRecord,
        rev: u64,
        progress: &Arc<Mutex<OpProgress>>,
    ) -> Result<()> {
        let (_, archive_path, manifest_path) = objects(base, &record.objects);
        // Export this node's copy (it applied `Pausing`; nothing can write the bucket now)
        // while uploading it.
        lock(progress).step = "exporting".into();
        let upload = store
            .put_multipart(&archive_path)
            .await
            .map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let (tx, mut rx) = mpsc::channel::<Bytes>(2);
        let scope = Scope::Bucket(bucket.to_owned());
        let p = Arc::clone(progress);
        let export = self.core.local(move |s| {
            let out = Handoff {
                tx,
                buf: Vec::with_capacity(HANDOFF_BYTES),
            };
            s.read()?
                .export(scope, out, |c| {
                    let mut p = lock(&p);
                    p.records += c.records;
                    p.bytes += c.bytes;
                })
                .map(|(summary, _)| summary)
        });
        let upload = async {
            while let Some(chunk) = rx.recv().await {
                writer.wait_for_capacity(2).await?;
                writer.put(chunk);
            }
            Ok::<_, object_store::Error>(writer)
        };
        let (summary, writer) = tokio::join!(export, upload);
        let writer = writer.map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let summary = match summary {
            Ok(s) => s,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        writer
            .finish()
            .await
            .map_err(|e| archive_err(format!("writing {archive_path}: {e}")))?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            archive_format: ARCHIVE_FORMAT,
            bucket: bucket.to_owned(),
            op: record.op,
            rev: summary.rev,
            records: summary.records,
            bytes: summary.bytes,
            chunks: summary
                .chunks
                .iter()
                .map(|c| ChunkEntry {
                    records: c.records,
                    bytes: c.bytes,
                    crc32: c.crc32,
                })
                .collect(),
        };
        store
            .put(&manifest_path, manifest.to_json().into())
            .await
            .map_err(|e| archive_err(format!("writing {manifest_path}: {e}")))?;

        // Read both back: the archive must be what the manifest says, the manifest what was
        // written. Only then does the data go.
        {
            let mut p = lock(progress);
            p.step = "verifying".into();
            (p.records, p.bytes) = (0, 0);
            p.records_total = Some(manifest.records);
            p.bytes_total = Some(manifest.bytes);
        }
        let (each, mut sink) = mpsc::channel(2);
        let drain = async { while sink.recv().await.is_some() {} };
        let (checked, ()) = tokio::join!(
            read_archive(
                download(Arc::clone(store), archive_path.clone()).await?,
                bucket.to_owned(),
                manifest.clone(),
                each,
                Arc::clone(progress),
            ),
            drain
        );
        checked?;
        let read = self.read_manifest(store, &manifest_path, bucket).await?;
        if read != manifest {
            return Err(archive_err(format!(
                "{manifest_path} read back differs from what was written"
            )));
        }

        self.state
            .config
            .archives
            .make_durable(
                &record.archive,
                &[archive_path.clone(), manifest_path.clone()],
            )
            .map_err(archive_err)?;

        lock(progress).step = "dropping".into();
        self.step(
            bucket,
            BucketState::Paused,
            true,
            &record.done(Some(manifest), now_ms()),
            Expect::Rev(rev),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn read_manifest(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &ObjectPath,
        bucket: &str,
    ) -> Result<Manifest> {
        let bytes = store
            .get(path)
            .await
            .map_err(|e| archive_err(format!("reading {path}: {e}")))?
            .bytes()
            .await
            .map_err(|e| archive_err(format!("reading {path}: {e}")))?;
        Manifest::from_json(&bytes, bucket, ARCHIVE_FORMAT)
            .map_err(|e| archive_err(format!("{path}: {e}")))
    }

    /// Starts resuming a paused `bucket` from its archive (or from `archive`, where its
    /// objects were moved), on the leader. Everything that can be checked before the bucket
    /// changes state is: the manifest is read, checked against the bucket's record, and the
    /// archive's size against it, and the data directory must have room.
    pub(crate) async fn start_resume(&self, bucket: &str, archive: Option<&str>) -> Result<OpId> {
        if let Some(archive) = archive {
            crate::archives::check_location(archive, &self.state.config.archive_roots)
                .map_err(Error::invalid)?;
        }
        let (reg, record) = self
            .begin_op(bucket, OpKind::Resume, BucketState::Paused)
            .await?;
        if let Some(archive) = archive {
            self.confirm_visible(archive).await?;
        }
        let Some((paused, rev)) = record else {
            return Err(archive_err(format!(
                "bucket {bucket:?} is paused but has no hibernation record"
            )));
        };
        let Some(manifest) = paused.manifest.clone() else {
            return Err(archive_err(format!(
                "bucket {bucket:?} has no verified archive to resume from"
            )));
        };
        let location = archive.unwrap_or(&paused.archive);
        let (store, base) = self
            .state
            .config
            .archives
            .open(location, false)
            .map_err(archive_err)?;
        let (_, archive_path, manifest_path) = objects(&base, &paused.objects);
        let read = self.read_manifest(&store, &manifest_path, bucket).await?;
        if read != manifest {
            return Err(archive_err(format!(
                "{manifest_path} does not match the manifest recorded when bucket {bucket:?} was paused"
            )));
        }
        let size = store
            .head(&archive_path)
            .await
            .map_err(|e| archive_err(format!("{archive_path}: {e}")))?
            .size;
        if size != manifest.bytes {
            return Err(archive_err(format!(
                "{archive_path} holds {size} bytes; its manifest says {}",
                manifest.bytes
            )));
        }
        // A restored record takes about twice its archived size in the store (its row and
        // its change entry), plus room for the B-trees to grow.
        let need = manifest.bytes.saturating_mul(3);
        if let Some(free) = free_bytes(&self.core.config.data_dir)
            && free < need
        {
            return Err(archive_err(format!(
                "not enough space: restoring {} bytes of archive needs about {need} bytes free in the data directory, {free} are",
                manifest.bytes
            )));
        }
        let op = reg.op;
        let started = paused.resume(op, archive, now_ms());
        let rev = self
            .step(
                bucket,
                BucketState::Resuming,
                false,
                &started,
                Expect::Rev(rev),
            )
            .await?;
        tracing::info!(%bucket, %op, archive = %started.archive, "resume started");
        let progress = self.progress_of(&reg);
        {
            let mut p = lock(&progress);
            p.records_total = Some(manifest.records);
            p.bytes_total = Some(manifest.bytes);
        }
        let node = self.clone();
        let b = bucket.to_owned();
        self.spawn_op(reg, async move {
            let outcome = node
                .resume_steps(&b, &store, archive_path, &started, rev, manifest, &progress)
                .await;
            node.end_op(&b, &started, rev, outcome).await;
        });
        Ok(op)
    }

    /// Streams the archive, checks every chunk, restores it through Raft, then `Active`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn resume_steps(
        &self,
        bucket: &str,
        store: &Arc<dyn ObjectStore>,
        archive_path: ObjectPath,
        record: &HibernationRecord,
        rev: u64,
        manifest: Manifest,
        progress: &Arc<Mutex<OpProgress>>,
    ) -> Result<()> {
        lock(progress).step = "restoring".into();
        let (each, chunks) = mpsc::channel(RESTORES_IN_FLIGHT);
        let restore = async {
            let chunks = futures_util::stream::unfold(chunks, |mut rx| async {
                rx.recv().await.map(|records| (records, rx))
            });
            let mut applied = std::pin::pin!(
                chunks
                    .map(|records| {
                        // As long as Raft takes: a chunk is never left half-known.
                        self.core.propose_here(
                            Op::Restore {
                                bucket: bucket.to_owned(),
                                records,
                            },
                            None,
                        )
                    })
                    .buffered(RESTORES_IN_FLIGHT)
            );
            while let Some(done) = applied.next().await {
                // On an error the stream, and with it the channel, is dropped: the reader stops.
                done?;
            }
            Ok::<(), Error>(())
        };
        let (read, restored) = tokio::join!(
            read_archive(
                download(Arc::clone(store), archive_path).await?,
                bucket.to_owned(),
                manifest,
                each,
                Arc::clone(progress),
            ),
            restore
        );
        restored?;
        read?;
        lock(progress).step = "finishing".into();
        self.step(
            bucket,
            BucketState::Active,
            false,
            &record.done(None, now_ms()),
            Expect::Rev(rev),
        )
        .await?;
        Ok(())
    }

    /// Records how an operation ended; on failure, rolls it back (a pause deletes its
    /// objects; a resume drops what it restored).
    pub(super) async fn end_op(
        &self,
        bucket: &str,
        record: &HibernationRecord,
        rev: u64,
        outcome: Result<()>,
    ) {
        let op = record.op;
        let error = match outcome {
            Ok(()) => {
                tracing::info!(%bucket, %op, kind = record.kind.as_str(), "done");
                return;
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(%bucket, %op, kind = record.kind.as_str(), %error, "failed; rolling back");
        // The same repair the janitor makes of an interrupted operation; if it does not land,
        // the janitor of this or the next leader finds the operation still running and retries.
        self.repair(metakv_gc::hibernate::rollback(
            bucket,
            record,
            rev,
            &error,
            now_ms(),
        ))
        .await;
    }

    /// What `bucket status` shows, from the leader.
    pub(crate) async fn hibernation_status(&self, bucket: &str) -> Result<HibernationStatus> {
        let (state, record) = self.hibernation_of(bucket).await?;
        Ok(HibernationStatus {
            bucket: bucket.to_owned(),
            state,
            record: record.map(|(r, _)| r),
            running: self.state.progress(bucket),
        })
    }
}
