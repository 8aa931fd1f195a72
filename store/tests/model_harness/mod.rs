//! The model of `tests/model.rs`, shared with the `store_model` fuzz target
//! (`fuzz/fuzz_targets/store_model.rs`): a sequence of [`Step`]s run against a real store and a
//! `BTreeMap` model, compared after every step. Every check is an assertion, so a divergence
//! panics with what differs.

#![allow(dead_code)]

use std::collections::BTreeMap;

use metakv_store::*;

#[path = "../common/mod.rs"]
mod common;

pub const BUCKETS: [&str; 3] = ["a", "b", "c"];
pub const KEYS: [&[u8]; 6] = [b"k0", b"k1", b"k2", b"k3", b"longer-key-4", b"\x00\xff"];

#[derive(Debug, Clone)]
pub enum Step {
    Create(usize),
    Drop(usize),
    Put(usize, usize, u8, ExpectPick),
    Delete(usize, usize, ExpectPick),
    /// Collect tombstones older than `age_ms` (the GC's collect phase).
    Collect(u64),
    /// Purge what was last collected, plus some made-up guards.
    PurgeCollected(Vec<(usize, usize, u64)>),
    PauseResume(usize),
    EmptyViaPause(usize),
    Compact,
    Reopen,
    Tick(u64),
}

#[derive(Debug, Clone, Copy)]
pub enum ExpectPick {
    Any,
    Absent,
    CurrentRev,
    OtherRev(u64),
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ModelBucket {
    created_rev: u64,
    purge_floor: u64,
    records: BTreeMap<Vec<u8>, Record>,
}

pub struct Harness {
    dir: tempfile::TempDir,
    store: Option<Store>,
    rev: u64,
    now: u64,
    model: BTreeMap<String, ModelBucket>,
    collected: Vec<TombstoneRef>,
}

impl Harness {
    /// A harness over a new store in `dir`.
    pub fn new(dir: tempfile::TempDir) -> Harness {
        let config = Config {
            durable: false,
            ..Config::new(dir.path().join("state.redb"))
        };
        Harness {
            store: Some(Store::open(config).unwrap()),
            dir,
            rev: 0,
            now: 1_000_000,
            model: BTreeMap::new(),
            collected: Vec::new(),
        }
    }

    /// The store's own integrity check, at the end of a sequence.
    pub fn check(&mut self) -> CheckReport {
        self.store.as_mut().unwrap().check().unwrap()
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn stamp(&mut self) -> Stamp {
        self.rev += 1;
        Stamp {
            rev: self.rev,
            time_ms: self.now,
        }
    }

    fn apply(&mut self, op: Op) -> Result<Applied> {
        let stamp = self.stamp();
        self.store().apply(&op, stamp)
    }

    pub fn run(&mut self, step: &Step) {
        match step.clone() {
            Step::Create(b) => {
                let name = BUCKETS[b];
                let got = self.apply(Op::CreateBucket {
                    bucket: name.into(),
                });
                if self.model.contains_key(name) {
                    assert!(matches!(got, Err(Error::BucketExists { .. })));
                } else {
                    assert_eq!(got.unwrap(), Applied::Done);
                    self.model.insert(
                        name.into(),
                        ModelBucket {
                            created_rev: self.rev,
                            ..Default::default()
                        },
                    );
                }
            }
            Step::Drop(b) => {
                let name = BUCKETS[b];
                let got = self.apply(Op::DropBucket {
                    bucket: name.into(),
                });
                match self.model.remove(name) {
                    None => assert!(matches!(got, Err(Error::BucketNotFound { .. }))),
                    Some(m) => {
                        let dead = m.records.values().filter(|r| r.deleted).count() as u64;
                        assert_eq!(
                            got.unwrap(),
                            Applied::Dropped {
                                records: m.records.len() as u64 - dead,
                                tombstones: dead
                            }
                        );
                    }
                }
            }
            Step::Put(b, k, v, e) => {
                let (name, key) = (BUCKETS[b], KEYS[k]);
                let expect = self.expect(name, key, e);
                let value = vec![v; v as usize % 7];
                let got = self.apply(Op::Put {
                    bucket: name.into(),
                    key: key.to_vec(),
                    value: value.clone(),
                    expect,
                });
                let (rev, now) = (self.rev, self.now);
                let Some(m) = self.model.get_mut(name) else {
                    assert!(matches!(got, Err(Error::BucketNotFound { .. })));
                    return;
                };
                let old = m.records.get(key);
                if !holds(expect, old) {
                    assert_eq!(
                        got.unwrap(),
                        Applied::Conflict {
                            current: old.map(|r| r.rev)
                        }
                    );
                    return;
                }
                let live = old.filter(|r| !r.deleted);
                let record = Record {
                    value,
                    rev,
                    create_rev: live.map_or(rev, |r| r.create_rev),
                    version: live.map_or(1, |r| r.version + 1),
                    mtime_ms: now,
                    deleted: false,
                };
                m.records.insert(key.to_vec(), record);
                assert_eq!(got.unwrap(), Applied::Written { rev });
            }
            Step::Delete(b, k, e) => {
                let (name, key) = (BUCKETS[b], KEYS[k]);
                let expect = self.expect(name, key, e);
                let got = self.apply(Op::Delete {
                    bucket: name.into(),
                    key: key.to_vec(),
                    expect,
                });
                let (rev, now) = (self.rev, self.now);
                let Some(m) = self.model.get_mut(name) else {
                    assert!(matches!(got, Err(Error::BucketNotFound { .. })));
                    return;
                };
                let old = m.records.get(key).cloned();
                if !holds(expect, old.as_ref()) {
                    assert_eq!(
                        got.unwrap(),
                        Applied::Conflict {
                            current: old.map(|r| r.rev)
                        }
                    );
                    return;
                }
                match old.filter(|r| !r.deleted) {
                    None => assert_eq!(got.unwrap(), Applied::NotFound),
                    Some(live) => {
                        let tomb = Record {
                            value: vec![],
                            rev,
                            create_rev: live.create_rev,
                            version: live.version + 1,
                            mtime_ms: now,
                            deleted: true,
                        };
                        m.records.insert(key.to_vec(), tomb);
                        assert_eq!(got.unwrap(), Applied::Written { rev });
                    }
                }
            }
            Step::Collect(age) => {
                let cutoff = self.now.saturating_sub(age);
                let q = TombstoneQuery {
                    after: None,
                    limit: 2,
                    max_rev: self.rev,
                    deleted_at_or_before_ms: cutoff,
                    pins: BTreeMap::new(),
                };
                let view = self.store().read().unwrap();
                let got = common::all_tombstones(&view, &q);
                let mut want = Vec::new();
                for (b, m) in &self.model {
                    for (k, r) in &m.records {
                        if r.deleted && r.mtime_ms <= cutoff {
                            want.push(TombstoneRef {
                                bucket: b.clone(),
                                key: k.clone(),
                                rev: r.rev,
                            });
                        }
                    }
                }
                assert_eq!(
                    got, want,
                    "collection is sorted by (bucket, key) and complete"
                );
                self.collected = got;
            }
            Step::PurgeCollected(extra) => {
                let mut items = std::mem::take(&mut self.collected);
                items.extend(extra.iter().map(|(b, k, rev)| TombstoneRef {
                    bucket: BUCKETS[*b].into(),
                    key: KEYS[*k].to_vec(),
                    rev: *rev,
                }));
                let before = self.model.clone();
                let got = self.apply(Op::Purge {
                    items: items.clone(),
                });
                let (mut purged, mut skipped) = (0, 0);
                for item in &items {
                    let m = self.model.get_mut(&item.bucket);
                    let is_match = m
                        .as_ref()
                        .and_then(|m| m.records.get(&item.key))
                        .is_some_and(|r| r.deleted && r.rev == item.rev);
                    if is_match {
                        let m = m.unwrap();
                        m.records.remove(&item.key);
                        m.purge_floor = m.purge_floor.max(item.rev);
                        purged += 1;
                    } else {
                        skipped += 1;
                    }
                }
                assert_eq!(got.unwrap(), Applied::Purged { purged, skipped });
                // The guard, said once more in its own words: nothing live went, and no tombstone
                // went that was not named with its exact revision.
                for (b, m) in &before {
                    for (k, r) in &m.records {
                        let named = items
                            .iter()
                            .any(|i| &i.bucket == b && &i.key == k && i.rev == r.rev);
                        let kept = self.store().read().unwrap().get(b, k, true).unwrap();
                        if !r.deleted || !named {
                            assert_eq!(kept.as_ref(), Some(r), "{b}/{k:?} must survive the purge");
                        }
                    }
                }
            }
            Step::PauseResume(b) => {
                let name = BUCKETS[b];
                if !self.model.contains_key(name) {
                    assert!(matches!(
                        self.apply(Op::SetBucketState {
                            bucket: name.into(),
                            state: BucketState::Pausing
                        }),
                        Err(Error::BucketNotFound { .. })
                    ));
                    return;
                }
                self.set_state(name, BucketState::Pausing);
                let (_, archive) = self
                    .store()
                    .export(Scope::Bucket(name.into()), Vec::new())
                    .unwrap();
                self.apply(Op::DropBucketData {
                    bucket: name.into(),
                })
                .unwrap();
                self.set_state(name, BucketState::Resuming);
                let mut reader = ArchiveReader::open(archive.as_slice()).unwrap();
                while let Some(frame) = reader.next().unwrap() {
                    if let Frame::Records { bucket, records } = frame {
                        self.apply(Op::Restore { bucket, records }).unwrap();
                    }
                }
                self.set_state(name, BucketState::Active);
            }
            Step::EmptyViaPause(b) => {
                let name = BUCKETS[b];
                if !self.model.contains_key(name) {
                    return;
                }
                self.set_state(name, BucketState::Pausing);
                self.apply(Op::DropBucketData {
                    bucket: name.into(),
                })
                .unwrap();
                self.set_state(name, BucketState::Resuming);
                self.set_state(name, BucketState::Active);
                self.model.get_mut(name).unwrap().records.clear();
            }
            Step::Compact => {
                let report = self.store.as_mut().unwrap().compact().unwrap();
                assert!(report.bytes_after <= report.bytes_before);
            }
            Step::Reopen => {
                self.store = None;
                self.store =
                    Some(Store::open(Config::new(self.dir.path().join("state.redb"))).unwrap());
            }
            Step::Tick(ms) => self.now += ms,
        }
    }

    fn set_state(&mut self, name: &str, state: BucketState) {
        assert_eq!(
            self.apply(Op::SetBucketState {
                bucket: name.into(),
                state
            })
            .unwrap(),
            Applied::Done
        );
    }

    fn expect(&self, bucket: &str, key: &[u8], pick: ExpectPick) -> Expect {
        match pick {
            ExpectPick::Any => Expect::Any,
            ExpectPick::Absent => Expect::Absent,
            ExpectPick::CurrentRev => {
                let rev = self
                    .model
                    .get(bucket)
                    .and_then(|m| m.records.get(key))
                    .map_or(1, |r| r.rev);
                Expect::Rev(rev)
            }
            ExpectPick::OtherRev(r) => Expect::Rev(r),
        }
    }

    /// The store must equal the model, bucket rows included.
    pub fn compare(&mut self) {
        let view = self.store().read().unwrap();
        let buckets = view.buckets().unwrap();
        let names: Vec<_> = buckets
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != SYS_BUCKET)
            .collect();
        assert_eq!(
            names,
            self.model.keys().map(String::as_str).collect::<Vec<_>>()
        );
        for (name, info) in buckets.iter().filter(|(n, _)| n != SYS_BUCKET) {
            let m = &self.model[name];
            let dead = m.records.values().filter(|r| r.deleted).count() as u64;
            assert_eq!(info.state, BucketState::Active);
            assert_eq!(
                (info.created_rev, info.purge_floor),
                (m.created_rev, m.purge_floor),
                "{name}"
            );
            assert_eq!(
                (info.records, info.tombstones),
                (m.records.len() as u64 - dead, dead),
                "{name}"
            );
            let page = view
                .scan(
                    name,
                    &Scan {
                        include_tombstones: true,
                        ..Scan::all()
                    },
                )
                .unwrap();
            assert_eq!(
                page.items,
                m.records.clone().into_iter().collect::<Vec<_>>(),
                "{name}"
            );
            for key in KEYS {
                let live = m.records.get(key).filter(|r| !r.deleted);
                assert_eq!(view.get(name, key, false).unwrap().as_ref(), live);
            }
        }
    }
}

fn holds(expect: Expect, old: Option<&Record>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => old.is_none_or(|r| r.deleted),
        Expect::Rev(rev) => old.is_some_and(|r| r.rev == rev),
    }
}
