//! The janitor: on a new leader and on a timer, finishes or rolls back what no operation of
//! this leader runs (the decisions are `metakv_gc::hibernate::janitor`'s).

use super::*;

impl Hibernation {
    /// The janitor: looks at every bucket not in `Active` and repairs what no operation of
    /// this leader is running on.
    pub(super) async fn run_janitor(&self) -> Result<()> {
        self.core
            .linearize(crate::api::Consistency::Linearizable)
            .await
            .map_err(|_| Error::NotLeader { leader: None })?;
        let scan = Scan {
            limit: metakv_store::PAGE_ITEMS_MAX,
            ..Scan::prefix(HIBERNATION_KEY_PREFIX)
        };
        let (buckets, records) = self
            .core
            .local(move |s| {
                let view = s.read()?;
                let mut records = Vec::new();
                let mut scan = scan;
                loop {
                    let page = view.scan(SYS_BUCKET, &scan)?;
                    records.extend(page.items);
                    match page.next {
                        Some(next) => scan.after = Some(next),
                        None => break,
                    }
                }
                Ok((view.buckets()?, records))
            })
            .await?;
        let mut by_bucket = BTreeMap::new();
        for (key, r) in records {
            let name = String::from_utf8_lossy(&key[HIBERNATION_KEY_PREFIX.len()..]).into_owned();
            match HibernationRecord::decode(&r.value) {
                Ok(h) => {
                    by_bucket.insert(name, (h, r.rev));
                }
                Err(e) => {
                    tracing::error!(bucket = %name, error = %e, "hibernation record unreadable")
                }
            }
        }
        let running: Vec<String> = lock(&self.state.running).keys().cloned().collect();
        let seen: Vec<Seen> = buckets
            .into_iter()
            .filter(|(name, info)| name != SYS_BUCKET && info.state != BucketState::Active)
            .map(|(name, info)| Seen {
                running: running.contains(&name),
                record: by_bucket.remove(&name),
                state: info.state,
                bucket: name,
            })
            .collect();
        for repair in janitor(&seen, now_ms()) {
            self.repair(repair).await;
        }
        Ok(())
    }

    pub(super) async fn repair(&self, repair: Repair) {
        let archives = &self.state.config.archives;
        match repair {
            Repair::RollBackPause {
                bucket,
                archive,
                objects,
                record,
                expect,
            } => {
                if let Ok((store, base)) = archives.open(&archive, false) {
                    delete_objects(&store, &base, &objects).await;
                }
                self.rolled_back(&bucket, BucketState::Active, false, &record, expect)
                    .await;
            }
            Repair::RollBackResume {
                bucket,
                record,
                expect,
            } => {
                self.rolled_back(&bucket, BucketState::Paused, true, &record, expect)
                    .await;
            }
            Repair::CheckArchive {
                bucket,
                record,
                expect,
            } => {
                let missing = match archives.open(&record.archive, false) {
                    Err(e) => Some(e.to_string()),
                    Ok((store, base)) => {
                        let (_, archive_path, manifest_path) = objects(&base, &record.objects);
                        let mut missing = None;
                        for path in [manifest_path, archive_path] {
                            if let Err(e) = store.head(&path).await {
                                missing = Some(format!("{path}: {e}"));
                                break;
                            }
                        }
                        missing
                    }
                };
                let Some(why) = missing else { return };
                let error = format!("archive missing: {why}");
                tracing::error!(%bucket, archive = %record.archive, %error, "a paused bucket's archive is missing; the bucket stays paused and nothing is dropped");
                if record.error.as_deref() != Some(error.as_str()) {
                    let noted = HibernationRecord {
                        error: Some(error),
                        ..record
                    };
                    let _ = self
                        .step(
                            &bucket,
                            BucketState::Paused,
                            false,
                            &noted,
                            Expect::Rev(expect),
                        )
                        .await;
                }
            }
            Repair::Report { bucket, problem } => {
                tracing::error!(%bucket, %problem, "hibernation: the janitor cannot repair this bucket");
            }
        }
    }

    /// Writes a rolled-back `record`, with the bucket back in `state` (its partial data
    /// dropped first when `drop_data`), expecting the running record at `expect`.
    pub(super) async fn rolled_back(
        &self,
        bucket: &str,
        state: BucketState,
        drop_data: bool,
        record: &HibernationRecord,
        expect: u64,
    ) {
        let done = self
            .step(bucket, state, drop_data, record, Expect::Rev(expect))
            .await;
        tracing::warn!(%bucket, op = %record.op, kind = record.kind.as_str(), reason = record.error.as_deref().unwrap_or(""), outcome = ?done.map(|_| ()), "operation rolled back");
    }
}
