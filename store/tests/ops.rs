//! Every store operation, and every way an operation is refused.

use std::collections::BTreeMap;

use metakv_store::*;

mod common;
use common::dump;
use tempfile::TempDir;

struct T {
    _dir: TempDir,
    store: Store,
    rev: u64,
}

impl T {
    fn new() -> T {
        T::with(|_| {})
    }
    fn with(f: impl FnOnce(&mut Config)) -> T {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("state.redb"));
        f(&mut config);
        T {
            store: Store::open(config).unwrap(),
            _dir: dir,
            rev: 0,
        }
    }
    fn stamp(&mut self) -> Stamp {
        self.rev += 1;
        Stamp {
            rev: self.rev,
            time_ms: self.rev * 1000,
        }
    }
    fn apply(&mut self, op: Op) -> Result<Applied> {
        let stamp = self.stamp();
        self.store.apply(&op, stamp)
    }
    fn ok(&mut self, op: Op) -> Applied {
        self.apply(op).unwrap()
    }
    fn bucket(&mut self, name: &str) {
        assert_eq!(
            self.ok(Op::CreateBucket {
                bucket: name.into()
            }),
            Applied::Done
        );
    }
    fn put(&mut self, b: &str, k: &str, v: &str) -> Applied {
        self.ok(put(b, k, v, Expect::Any))
    }
    fn del(&mut self, b: &str, k: &str) -> Applied {
        self.ok(Op::Delete {
            bucket: b.into(),
            key: k.into(),
            expect: Expect::Any,
        })
    }
    fn state(&mut self, b: &str, s: BucketState) -> Result<Applied> {
        self.apply(Op::SetBucketState {
            bucket: b.into(),
            state: s,
        })
    }
    fn get(&self, b: &str, k: &str) -> Option<Record> {
        self.store.get(b, k.as_bytes()).unwrap()
    }
    fn get_any(&self, b: &str, k: &str) -> Option<Record> {
        self.store
            .read()
            .unwrap()
            .get(b, k.as_bytes(), true)
            .unwrap()
    }
}

fn put(b: &str, k: &str, v: &str, expect: Expect) -> Op {
    Op::Put {
        bucket: b.into(),
        key: k.into(),
        value: v.into(),
        expect,
    }
}

fn tomb(b: &str, k: &str, rev: u64) -> TombstoneRef {
    TombstoneRef {
        bucket: b.into(),
        key: k.into(),
        rev,
    }
}

#[test]
fn buckets_create_list_drop() {
    let mut t = T::new();
    t.bucket("users");
    t.bucket("roles");
    let names: Vec<_> = t
        .store
        .read()
        .unwrap()
        .buckets()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["_sys", "roles", "users"]);
    assert!(matches!(
        t.apply(Op::CreateBucket {
            bucket: "users".into()
        }),
        Err(Error::BucketExists { .. })
    ));
    assert!(matches!(
        t.apply(Op::CreateBucket {
            bucket: "Users".into()
        }),
        Err(Error::InvalidBucketName { .. })
    ));
    assert!(matches!(
        t.apply(Op::CreateBucket {
            bucket: "_sys".into()
        }),
        Err(Error::ReservedBucket { .. })
    ));
    assert!(matches!(
        t.apply(Op::DropBucket {
            bucket: "_sys".into()
        }),
        Err(Error::ReservedBucket { .. })
    ));
    assert!(matches!(
        t.apply(Op::DropBucket {
            bucket: "nope".into()
        }),
        Err(Error::BucketNotFound { .. })
    ));
    t.put("users", "a", "1");
    t.put("users", "b", "2");
    t.del("users", "b");
    t.put("roles", "a", "x");
    assert_eq!(
        t.ok(Op::DropBucket {
            bucket: "users".into()
        }),
        Applied::Dropped {
            records: 1,
            tombstones: 1
        }
    );
    assert!(matches!(
        t.store.get("users", b"a"),
        Err(Error::BucketNotFound { .. })
    ));
    // Re-created, the bucket is empty; the neighbour kept its record.
    t.bucket("users");
    assert_eq!(t.get("users", "a"), None);
    assert_eq!(t.get("roles", "a").unwrap().value, b"x");
    assert!(t.store.check().unwrap().is_ok());
}

#[test]
fn put_get_versions_and_tombstones() {
    let mut t = T::new();
    t.bucket("users");
    assert_eq!(t.put("users", "ada", "v1"), Applied::Written { rev: 2 });
    assert_eq!(t.put("users", "ada", "v2"), Applied::Written { rev: 3 });
    let r = t.get("users", "ada").unwrap();
    assert_eq!(
        (
            r.value.as_slice(),
            r.rev,
            r.create_rev,
            r.version,
            r.mtime_ms,
            r.deleted
        ),
        (&b"v2"[..], 3, 2, 2, 3000, false)
    );
    assert_eq!(t.del("users", "ada"), Applied::Written { rev: 4 });
    assert_eq!(t.get("users", "ada"), None, "a tombstone reads as absent");
    let tomb = t.get_any("users", "ada").unwrap();
    assert_eq!(
        (
            tomb.value.len(),
            tomb.rev,
            tomb.create_rev,
            tomb.version,
            tomb.deleted
        ),
        (0, 4, 2, 3, true)
    );
    assert_eq!(
        t.del("users", "ada"),
        Applied::NotFound,
        "deleting a tombstone changes nothing"
    );
    assert_eq!(t.del("users", "never"), Applied::NotFound);
    // A put over a tombstone starts a new life.
    assert_eq!(t.put("users", "ada", "v3"), Applied::Written { rev: 7 });
    let r = t.get("users", "ada").unwrap();
    assert_eq!((r.create_rev, r.version), (7, 1));
    let info = t.store.bucket("users").unwrap();
    assert_eq!((info.records, info.tombstones), (1, 0));
}

#[test]
fn expectations_are_answers_not_errors() {
    let mut t = T::new();
    t.bucket("b");
    assert_eq!(
        t.ok(put("b", "k", "1", Expect::Absent)),
        Applied::Written { rev: 2 }
    );
    assert_eq!(
        t.ok(put("b", "k", "2", Expect::Absent)),
        Applied::Conflict { current: Some(2) }
    );
    assert_eq!(
        t.ok(put("b", "k", "2", Expect::Rev(1))),
        Applied::Conflict { current: Some(2) }
    );
    assert_eq!(
        t.ok(put("b", "k", "2", Expect::Rev(2))),
        Applied::Written { rev: 5 }
    );
    assert_eq!(
        t.ok(Op::Delete {
            bucket: "b".into(),
            key: "k".into(),
            expect: Expect::Rev(2)
        }),
        Applied::Conflict { current: Some(5) }
    );
    assert_eq!(
        t.ok(Op::Delete {
            bucket: "b".into(),
            key: "k".into(),
            expect: Expect::Absent
        }),
        Applied::Conflict { current: Some(5) }
    );
    assert_eq!(
        t.ok(Op::Delete {
            bucket: "b".into(),
            key: "k".into(),
            expect: Expect::Rev(5)
        }),
        Applied::Written { rev: 8 }
    );
    assert_eq!(
        t.ok(put("b", "nope", "x", Expect::Rev(3))),
        Applied::Conflict { current: None }
    );
    // A tombstone counts as absent, and a revision expectation can name it.
    assert_eq!(
        t.ok(put("b", "k", "3", Expect::Rev(7))),
        Applied::Conflict { current: Some(8) }
    );
    assert_eq!(
        t.ok(put("b", "k", "3", Expect::Rev(8))),
        Applied::Written { rev: 11 }
    );
    t.del("b", "k");
    assert_eq!(
        t.ok(put("b", "k", "4", Expect::Absent)),
        Applied::Written { rev: 13 }
    );
    assert_eq!(t.get("b", "k").unwrap().value, b"4");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut t = T::with(|c| c.value_bytes_max = 100);
    t.bucket("b");
    t.put("b", "k", "v");
    t.del("b", "k");
    let before = dump(&t.store);
    let long_key = vec![b'x'; KEY_BYTES_MAX + 1];
    type IsExpected = fn(&Error) -> bool;
    let refused: Vec<(Op, IsExpected)> = vec![
        (
            Op::Put {
                bucket: "b".into(),
                key: vec![],
                value: vec![],
                expect: Expect::Any,
            },
            |e| matches!(e, Error::KeyEmpty { .. }),
        ),
        (
            Op::Put {
                bucket: "b".into(),
                key: long_key.clone(),
                value: vec![],
                expect: Expect::Any,
            },
            |e| {
                matches!(
                    e,
                    Error::KeyTooLarge {
                        len: 1025,
                        max: 1024,
                        ..
                    }
                )
            },
        ),
        (
            Op::Delete {
                bucket: "b".into(),
                key: long_key,
                expect: Expect::Any,
            },
            |e| matches!(e, Error::KeyTooLarge { .. }),
        ),
        (
            Op::Put {
                bucket: "b".into(),
                key: "k".into(),
                value: vec![0; 101],
                expect: Expect::Any,
            },
            |e| {
                matches!(
                    e,
                    Error::ValueTooLarge {
                        len: 101,
                        max: 100,
                        ..
                    }
                )
            },
        ),
        (put("nope", "k", "v", Expect::Any), |e| {
            matches!(e, Error::BucketNotFound { .. })
        }),
        (
            Op::Delete {
                bucket: "nope".into(),
                key: "k".into(),
                expect: Expect::Any,
            },
            |e| matches!(e, Error::BucketNotFound { .. }),
        ),
        (
            Op::Purge {
                items: vec![tomb("b", "k", 3); BATCH_ITEMS_MAX + 1],
            },
            |e| matches!(e, Error::LimitExceeded { .. }),
        ),
        (
            Op::SetBucketState {
                bucket: "b".into(),
                state: BucketState::Paused,
            },
            |e| matches!(e, Error::InvalidTransition { .. }),
        ),
        (
            Op::SetBucketState {
                bucket: "_sys".into(),
                state: BucketState::Pausing,
            },
            |e| matches!(e, Error::ReservedBucket { .. }),
        ),
        (Op::DropBucketData { bucket: "b".into() }, |e| {
            matches!(e, Error::BucketState { .. })
        }),
        (
            Op::Restore {
                bucket: "b".into(),
                records: vec![],
            },
            |e| matches!(e, Error::BucketState { .. }),
        ),
    ];
    for (op, is_expected) in refused {
        let err = t.apply(op.clone()).unwrap_err();
        assert!(is_expected(&err), "{op:?} gave {err}");
        assert!(!err.is_fatal());
        assert!(!err.to_string().is_empty());
        assert_eq!(dump(&t.store), before, "{op:?} changed the store");
    }
    // A stale revision is refused too.
    let stale = Stamp { rev: 2, time_ms: 0 };
    assert!(matches!(
        t.store.apply(&put("b", "z", "v", Expect::Any), stale),
        Err(Error::StaleRevision { rev: 2, last: 3 })
    ));
    assert_eq!(dump(&t.store), before);
    // Reads check their input too.
    assert!(matches!(t.store.get("b", b""), Err(Error::KeyEmpty { .. })));
    assert!(matches!(
        t.store.read().unwrap().scan(
            "b",
            &Scan {
                limit: 0,
                ..Scan::all()
            }
        ),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        t.store.read().unwrap().scan(
            "b",
            &Scan {
                limit: PAGE_ITEMS_MAX + 1,
                ..Scan::all()
            }
        ),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        Store::open(Config {
            value_bytes_max: VALUE_BYTES_MAX_CEILING + 1,
            ..Config::new(t._dir.path().join("other.redb"))
        }),
        Err(Error::LimitExceeded { .. })
    ));
}

#[test]
fn a_batch_is_one_transaction() {
    let mut t = T::new();
    t.bucket("b");
    // A rejected op in the middle: answered, and the rest of the batch still commits.
    let answers = t
        .store
        .write(|w| {
            let mut out = Vec::new();
            for (i, op) in [
                put("b", "x", "1", Expect::Any),
                put("nope", "x", "1", Expect::Any),
                put("b", "y", "2", Expect::Any),
            ]
            .iter()
            .enumerate()
            {
                out.push(
                    w.apply(
                        op,
                        Stamp {
                            rev: 10 + i as u64,
                            time_ms: 0,
                        },
                    )
                    .map_err(|e| e.to_string()),
                );
            }
            Ok(out)
        })
        .unwrap();
    assert_eq!(answers[0], Ok(Applied::Written { rev: 10 }));
    assert!(answers[1].as_ref().unwrap_err().contains("nope"));
    assert_eq!(answers[2], Ok(Applied::Written { rev: 12 }));
    assert_eq!(t.store.bucket("b").unwrap().records, 2);
    // A batch whose closure fails commits nothing.
    let before = dump(&t.store);
    let err = t.store.write(|w| {
        w.apply(
            &put("b", "z", "1", Expect::Any),
            Stamp {
                rev: 20,
                time_ms: 0,
            },
        )?;
        w.apply(
            &put("nope", "z", "1", Expect::Any),
            Stamp {
                rev: 21,
                time_ms: 0,
            },
        )
    });
    assert!(err.is_err());
    assert_eq!(dump(&t.store), before);
}

#[test]
fn scans_page_by_prefix() {
    let mut t = T::new();
    t.bucket("b");
    t.bucket("c");
    for k in ["a1", "a2", "a3", "b1", "a\u{ff}"] {
        t.put("b", k, k);
    }
    t.put("c", "a0", "other bucket");
    t.del("b", "a2");
    let view = t.store.read().unwrap();
    let keys = |p: &ScanPage| {
        p.items
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    let page = view.scan("b", &Scan::prefix("a")).unwrap();
    assert_eq!(keys(&page), ["a1", "a3", "a\u{ff}"]);
    assert_eq!(page.next, None);
    let page = view
        .scan(
            "b",
            &Scan {
                limit: 1,
                ..Scan::prefix("a")
            },
        )
        .unwrap();
    assert_eq!(keys(&page), ["a1"]);
    let page = view
        .scan(
            "b",
            &Scan {
                limit: 1,
                after: page.next,
                ..Scan::prefix("a")
            },
        )
        .unwrap();
    assert_eq!(keys(&page), ["a3"]);
    let page = view
        .scan(
            "b",
            &Scan {
                include_tombstones: true,
                ..Scan::prefix("a")
            },
        )
        .unwrap();
    assert_eq!(keys(&page), ["a1", "a2", "a3", "a\u{ff}"]);
    assert!(page.items[1].1.deleted);
    let page = view.scan("b", &Scan::all()).unwrap();
    assert_eq!(keys(&page), ["a1", "a3", "a\u{ff}", "b1"]);
    let info = view.bucket("b").unwrap();
    assert_eq!((info.records, info.tombstones), (4, 1));
}

#[test]
fn scan_over_many_tombstones_stays_bounded() {
    let mut t = T::new();
    t.bucket("b");
    let n = PAGE_ROWS_SCANNED_MAX + 10;
    t.store
        .write(|w| {
            for i in 0..n {
                let key = format!("k{i:06}").into_bytes();
                w.apply(
                    &Op::Put {
                        bucket: "b".into(),
                        key: key.clone(),
                        value: vec![],
                        expect: Expect::Any,
                    },
                    Stamp {
                        rev: 10 + 2 * i as u64,
                        time_ms: 0,
                    },
                )?;
                if i < n - 1 {
                    w.apply(
                        &Op::Delete {
                            bucket: "b".into(),
                            key,
                            expect: Expect::Any,
                        },
                        Stamp {
                            rev: 11 + 2 * i as u64,
                            time_ms: 0,
                        },
                    )?;
                }
            }
            Ok(())
        })
        .unwrap();
    let view = t.store.read().unwrap();
    let first = view.scan("b", &Scan::all()).unwrap();
    assert!(
        first.items.is_empty() && first.next.is_some(),
        "a page stops after PAGE_ROWS_SCANNED_MAX rows"
    );
    let second = view
        .scan(
            "b",
            &Scan {
                after: first.next,
                ..Scan::all()
            },
        )
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.next, None);
}

#[test]
fn changes_feed_in_revision_order_and_compacted_below_floor() {
    let mut t = T::new();
    t.bucket("b");
    t.put("b", "x", "1"); // 2
    t.put("b", "y", "1"); // 3
    t.put("b", "zz", "1"); // 4
    t.put("b", "x", "2"); // 5
    t.del("b", "y"); // 6
    let feed = |t: &T, prefix: &str, after: u64, limit: usize| {
        t.store
            .read()
            .unwrap()
            .changes("b", prefix.as_bytes(), after, limit)
            .unwrap()
    };
    let Changes::Events {
        events,
        next_after_rev,
        more,
    } = feed(&t, "", 0, 100)
    else {
        panic!()
    };
    let seen: Vec<_> = events
        .iter()
        .map(|c| {
            (
                String::from_utf8(c.key.clone()).unwrap(),
                c.record.rev,
                c.record.deleted,
            )
        })
        .collect();
    // One event per key at its latest revision, in revision order, deletes included.
    assert_eq!(
        seen,
        [
            ("zz".into(), 4, false),
            ("x".into(), 5, false),
            ("y".into(), 6, true)
        ]
    );
    assert_eq!((next_after_rev, more), (6, false));
    let Changes::Events { events, .. } = feed(&t, "z", 0, 100) else {
        panic!()
    };
    assert_eq!(events.len(), 1);
    let Changes::Events {
        events,
        next_after_rev,
        more,
    } = feed(&t, "", 4, 1)
    else {
        panic!()
    };
    assert_eq!((events[0].record.rev, next_after_rev, more), (5, 5, true));
    let Changes::Events { events, .. } = feed(&t, "", 6, 10) else {
        panic!()
    };
    assert!(events.is_empty());
    let Changes::Events { events, .. } = feed(&t, "", u64::MAX, 10) else {
        panic!()
    };
    assert!(events.is_empty());
    // Purging the tombstone at rev 6 raises the floor: a feed from below it cannot show the delete.
    assert_eq!(
        t.ok(Op::Purge {
            items: vec![tomb("b", "y", 6)]
        }),
        Applied::Purged {
            purged: 1,
            skipped: 0
        }
    );
    assert_eq!(feed(&t, "", 5, 10), Changes::Compacted { floor: 6 });
    assert!(matches!(feed(&t, "", 6, 10), Changes::Events { .. }));
}

#[test]
fn tombstone_collection_filters_and_pages() {
    let mut t = T::new();
    t.bucket("a");
    t.bucket("b");
    for k in ["k1", "k2", "k3"] {
        t.put("a", k, "v");
        t.put("b", k, "v");
    }
    // revs: a/k1 del 9 (t=9000), b/k1 10, a/k2 11, b/k2 12, a/k3 13; b/k3 stays live.
    for (b, k) in [
        ("a", "k1"),
        ("b", "k1"),
        ("a", "k2"),
        ("b", "k2"),
        ("a", "k3"),
    ] {
        t.del(b, k);
    }
    let view = t.store.read().unwrap();
    let q = TombstoneQuery {
        after: None,
        limit: 100,
        max_rev: u64::MAX,
        deleted_at_or_before_ms: u64::MAX,
        pins: BTreeMap::new(),
    };
    let all = view.tombstones(&q).unwrap();
    let refs = |p: &TombstonePage| {
        p.items
            .iter()
            .map(|i| format!("{}/{}@{}", i.bucket, String::from_utf8_lossy(&i.key), i.rev))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        refs(&all),
        ["a/k1@9", "a/k2@11", "a/k3@13", "b/k1@10", "b/k2@12"]
    );
    assert_eq!(
        refs(
            &view
                .tombstones(&TombstoneQuery {
                    max_rev: 11,
                    ..q.clone()
                })
                .unwrap()
        ),
        ["a/k1@9", "a/k2@11", "b/k1@10"]
    );
    assert_eq!(
        refs(
            &view
                .tombstones(&TombstoneQuery {
                    deleted_at_or_before_ms: 10_000,
                    ..q.clone()
                })
                .unwrap()
        ),
        ["a/k1@9", "b/k1@10"]
    );
    let pins = BTreeMap::from([("a".to_owned(), 10)]);
    assert_eq!(
        refs(
            &view
                .tombstones(&TombstoneQuery { pins, ..q.clone() })
                .unwrap()
        ),
        ["a/k1@9", "b/k1@10", "b/k2@12"]
    );
    let page1 = view
        .tombstones(&TombstoneQuery {
            limit: 2,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(refs(&page1), ["a/k1@9", "a/k2@11"]);
    let page2 = view
        .tombstones(&TombstoneQuery {
            limit: 2,
            after: page1.next,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(refs(&page2), ["a/k3@13", "b/k1@10"]);
    let page3 = view
        .tombstones(&TombstoneQuery {
            limit: 2,
            after: page2.next,
            ..q.clone()
        })
        .unwrap();
    assert_eq!(
        (refs(&page3), page3.next),
        (vec!["b/k2@12".to_owned()], None)
    );
}

#[test]
fn purge_guard_keeps_everything_that_changed() {
    let mut t = T::new();
    t.bucket("b");
    for k in ["gone", "back", "again", "live"] {
        t.put("b", k, "v");
    }
    for k in ["gone", "back", "again"] {
        t.del("b", k); // 6, 7, 8
    }
    let collected = vec![
        tomb("b", "gone", 6),
        tomb("b", "back", 7),
        tomb("b", "again", 8),
        tomb("b", "live", 5),
        tomb("b", "never", 3),
        tomb("nobucket", "x", 3),
    ];
    // Between collection and purge: "back" is put again, "again" is put and deleted again.
    t.put("b", "back", "new"); // 9
    t.put("b", "again", "new"); // 10
    t.del("b", "again"); // 11
    assert_eq!(
        t.ok(Op::Purge { items: collected }),
        Applied::Purged {
            purged: 1,
            skipped: 5
        }
    );
    assert_eq!(t.get_any("b", "gone"), None);
    assert_eq!(t.get("b", "back").unwrap().value, b"new");
    assert_eq!(t.get_any("b", "again").unwrap().rev, 11);
    assert_eq!(t.get("b", "live").unwrap().value, b"v");
    let info = t.store.bucket("b").unwrap();
    assert_eq!((info.records, info.tombstones, info.purge_floor), (2, 1, 6));
    assert!(t.store.check().unwrap().is_ok());
}

#[test]
fn hibernation_states_gate_reads_writes_and_data_ops() {
    let mut t = T::new();
    t.bucket("b");
    t.put("b", "k", "v"); // 2
    t.put("b", "t", "v"); // 3
    t.del("b", "t"); // 4
    let (records, _) = {
        let view = t.store.read().unwrap();
        let page = view
            .scan(
                "b",
                &Scan {
                    include_tombstones: true,
                    ..Scan::all()
                },
            )
            .unwrap();
        (page.items, ())
    };
    t.state("b", BucketState::Pausing).unwrap();
    assert!(matches!(
        t.apply(put("b", "k", "w", Expect::Any)),
        Err(Error::BucketPaused {
            state: BucketState::Pausing,
            ..
        })
    ));
    assert!(matches!(
        t.apply(Op::Delete {
            bucket: "b".into(),
            key: "k".into(),
            expect: Expect::Any
        }),
        Err(Error::BucketPaused { .. })
    ));
    assert_eq!(
        t.get("b", "k").unwrap().value,
        b"v",
        "a pausing bucket still answers reads"
    );
    assert_eq!(
        t.ok(Op::DropBucketData { bucket: "b".into() }),
        Applied::Dropped {
            records: 1,
            tombstones: 1
        }
    );
    let state = t.store.read().unwrap().bucket_state("b").unwrap();
    assert_eq!(
        state,
        BucketState::Paused,
        "dropping the data ends the pause"
    );
    assert!(matches!(
        t.store.get("b", b"k"),
        Err(Error::BucketPaused {
            state: BucketState::Paused,
            ..
        })
    ));
    assert!(matches!(
        t.store.read().unwrap().changes("b", b"", 0, 10),
        Err(Error::BucketPaused { .. })
    ));
    assert!(matches!(
        t.apply(Op::Restore {
            bucket: "b".into(),
            records: records.clone()
        }),
        Err(Error::BucketState { .. })
    ));
    t.state("b", BucketState::Resuming).unwrap();
    // A restored record may not claim a revision at or above the entry restoring it.
    let mut future = records.clone();
    future[0].1.rev = 1_000;
    assert!(matches!(
        t.apply(Op::Restore {
            bucket: "b".into(),
            records: future
        }),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(
        t.ok(Op::Restore {
            bucket: "b".into(),
            records: records.clone()
        }),
        Applied::Restored { records: 2 }
    );
    // Restoring the same chunk twice (a retried entry) is harmless.
    assert_eq!(
        t.ok(Op::Restore {
            bucket: "b".into(),
            records: records.clone()
        }),
        Applied::Restored { records: 2 }
    );
    t.state("b", BucketState::Active).unwrap();
    assert_eq!(
        t.get("b", "k").unwrap(),
        records.iter().find(|(k, _)| k == b"k").unwrap().1
    );
    assert_eq!(t.get_any("b", "t").unwrap().rev, 4);
    let info = t.store.bucket("b").unwrap();
    assert_eq!((info.records, info.tombstones), (1, 1));
    assert!(matches!(
        t.state("b", BucketState::Resuming),
        Err(Error::InvalidTransition { .. })
    ));
    // Rollbacks: Pausing -> Active, Resuming -> Paused.
    t.state("b", BucketState::Pausing).unwrap();
    t.state("b", BucketState::Active).unwrap();
    t.put("b", "k", "after rollback");
    t.state("b", BucketState::Pausing).unwrap();
    t.apply(Op::DropBucketData { bucket: "b".into() }).unwrap();
    t.state("b", BucketState::Resuming).unwrap();
    t.state("b", BucketState::Paused).unwrap();
    assert!(t.store.check().unwrap().is_ok());
}

/// `Op::Hibernate`: a state move, an optional drop and the `_sys` record in one entry, all
/// guarded by the record's revision.
#[test]
fn hibernate_steps_move_state_and_record_together_under_a_guard() {
    let mut t = T::new();
    t.bucket("b");
    t.put("b", "k", "v");
    let step = |state, drop_data, record: &str, expect| Op::Hibernate {
        bucket: "b".into(),
        state,
        drop_data,
        record: record.as_bytes().to_vec(),
        expect,
    };
    let record = |t: &T| {
        t.get(
            SYS_BUCKET,
            std::str::from_utf8(&hibernation_key("b")).unwrap(),
        )
    };
    let Applied::Written { rev: begun } = t.ok(step(
        BucketState::Pausing,
        false,
        "op1 pausing",
        Expect::Absent,
    )) else {
        panic!("the first step writes the record")
    };
    assert_eq!(
        t.store.read().unwrap().bucket_state("b").unwrap(),
        BucketState::Pausing
    );
    assert_eq!(record(&t).unwrap().value, b"op1 pausing");
    // A second pause that expects no record, or an older one, changes nothing.
    let before = dump(&t.store);
    assert_eq!(
        t.ok(step(BucketState::Pausing, false, "op2", Expect::Absent)),
        Applied::Conflict {
            current: Some(begun)
        }
    );
    assert_eq!(
        t.ok(step(
            BucketState::Paused,
            true,
            "op1 stale",
            Expect::Rev(begun - 1)
        )),
        Applied::Conflict {
            current: Some(begun)
        }
    );
    // Refusals: a move the life cycle does not draw, a drop that does not end in Paused.
    assert!(matches!(
        t.apply(step(BucketState::Resuming, false, "x", Expect::Rev(begun))),
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        t.apply(step(BucketState::Active, true, "x", Expect::Rev(begun))),
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        t.apply(Op::Hibernate {
            bucket: SYS_BUCKET.into(),
            state: BucketState::Pausing,
            drop_data: false,
            record: vec![],
            expect: Expect::Any
        }),
        Err(Error::ReservedBucket { .. })
    ));
    let after = dump(&t.store);
    assert_eq!(
        (after.buckets, after.records),
        (before.buckets, before.records),
        "refused and stale steps change nothing (a conflict answer uses its revision)"
    );
    // The drop: data gone, bucket Paused, record updated, in one entry.
    let Applied::Written { rev: paused } = t.ok(step(
        BucketState::Paused,
        true,
        "op1 paused",
        Expect::Rev(begun),
    )) else {
        panic!("the drop writes the record")
    };
    assert_eq!(
        t.store.read().unwrap().bucket_state("b").unwrap(),
        BucketState::Paused
    );
    assert_eq!(t.store.bucket("b").unwrap().records, 0);
    assert_eq!(record(&t).unwrap().value, b"op1 paused");
    // A record-only step (no move) is allowed: a note on a paused bucket.
    assert!(matches!(
        t.ok(step(
            BucketState::Paused,
            false,
            "op1 paused, archive missing",
            Expect::Rev(paused)
        )),
        Applied::Written { .. }
    ));
    assert!(matches!(
        t.apply(step(BucketState::Paused, true, "x", Expect::Any)),
        Err(Error::BucketState { .. })
    ));
    assert!(t.store.check().unwrap().is_ok());
}

#[test]
fn meta_is_kept_and_the_store_namespace_refused() {
    let t = T::new();
    t.store
        .write(|w| w.set_meta("raft.applied", b"abc"))
        .unwrap();
    assert_eq!(
        t.store
            .read()
            .unwrap()
            .meta("raft.applied")
            .unwrap()
            .unwrap(),
        b"abc"
    );
    assert!(matches!(
        t.store.write(|w| w.set_meta("store.last_rev", b"x")),
        Err(Error::ReservedMeta { .. })
    ));
}

#[test]
fn reopen_keeps_everything_and_refuses_another_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = {
        let mut t = T {
            store: Store::open(Config::new(&path)).unwrap(),
            _dir: tempfile::tempdir().unwrap(),
            rev: 0,
        };
        t.bucket("b");
        t.put("b", "k", "v");
        t.del("b", "k");
        t.put("b", "j", "v");
        dump(&t.store)
    };
    let t = T {
        store: Store::open(Config::new(&path)).unwrap(),
        _dir: tempfile::tempdir().unwrap(),
        rev: 0,
    };
    assert_eq!(dump(&t.store), before);
    drop(t);
    // Rewrite the format version as if a future build had written the file.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("format_version", &99u32.to_le_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(Config::new(&path)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FormatVersion {
                found: 99,
                supported: STORE_FORMAT,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn compaction_shrinks_the_file_and_keeps_the_data() {
    let mut t = T::with(|c| c.durable = false);
    t.bucket("b");
    let value = vec![7u8; 512];
    let n = 20_000u64;
    t.store
        .write(|w| {
            for i in 0..n {
                let op = Op::Put {
                    bucket: "b".into(),
                    key: format!("key{i:08}").into_bytes(),
                    value: value.clone(),
                    expect: Expect::Any,
                };
                w.apply(
                    &op,
                    Stamp {
                        rev: 10 + i,
                        time_ms: 0,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    t.store
        .write(|w| {
            for i in 0..n - 100 {
                let op = Op::Delete {
                    bucket: "b".into(),
                    key: format!("key{i:08}").into_bytes(),
                    expect: Expect::Any,
                };
                w.apply(
                    &op,
                    Stamp {
                        rev: 10 + n + i,
                        time_ms: 0,
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
    let view = t.store.read().unwrap();
    let q = TombstoneQuery {
        after: None,
        limit: BATCH_ITEMS_MAX,
        max_rev: u64::MAX,
        deleted_at_or_before_ms: u64::MAX,
        pins: BTreeMap::new(),
    };
    let items = common::all_tombstones(&view, &q);
    drop(view);
    assert_eq!(items.len() as u64, n - 100);
    for (rev, chunk) in (10 + 2 * n..).zip(items.chunks(BATCH_ITEMS_MAX)) {
        t.store
            .apply(
                &Op::Purge {
                    items: chunk.to_vec(),
                },
                Stamp { rev, time_ms: 0 },
            )
            .unwrap();
    }
    let before = dump(&t.store);
    let sizes = t.store.sizes().unwrap();
    assert!(sizes.in_use_bytes < sizes.file_bytes, "{sizes:?}");
    let report = t.store.compact().unwrap();
    assert!(report.bytes_after < report.bytes_before / 4, "{report:?}");
    assert_eq!(report.bytes_after, t.store.sizes().unwrap().file_bytes);
    assert_eq!(dump(&t.store), before);
    assert!(t.store.check().unwrap().is_ok());
}

/// A store at `path` holding bucket `b`, created at revision 1.
fn open_with_bucket(path: &std::path::Path) -> Store {
    let store = Store::open(Config::new(path)).unwrap();
    store
        .apply(
            &Op::CreateBucket { bucket: "b".into() },
            Stamp { rev: 1, time_ms: 0 },
        )
        .unwrap();
    store
}

/// Compaction rebuilds the file next to the store and renames it over: the store keeps going
/// in the new file, and what it writes afterwards is there after a reopen.
#[test]
fn compaction_rebuilds_the_file_and_later_writes_land_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let copy = dir.path().join("state.redb.compacting");
    let mut store = Store::open(Config::new(&path)).unwrap();
    let mut rev = 0;
    let mut apply = |store: &Store, op: Op| {
        rev += 1;
        store.apply(&op, Stamp { rev, time_ms: 0 }).unwrap()
    };
    apply(&store, Op::CreateBucket { bucket: "b".into() });
    for i in 0..500 {
        apply(&store, put("b", &format!("k{i:04}"), "v", Expect::Any));
    }
    for i in 0..400 {
        apply(
            &store,
            Op::Delete {
                bucket: "b".into(),
                key: format!("k{i:04}").into_bytes(),
                expect: Expect::Any,
            },
        );
    }
    let before = dump(&store);
    let report = store.compact().unwrap();
    assert!(report.rows > 500, "{report:?}");
    assert!(!copy.exists());
    assert_eq!(dump(&store), before);
    apply(&store, put("b", "after", "compaction", Expect::Absent));
    apply(&store, Op::CreateBucket { bucket: "c".into() });
    let after = dump(&store);
    assert_ne!(after, before);
    drop(store);
    let mut store = Store::open(Config::new(&path)).unwrap();
    assert_eq!(dump(&store), after);
    assert_eq!(
        store.get("b", b"after").unwrap().unwrap().value,
        b"compaction"
    );
    assert!(store.check().unwrap().is_ok());
}

/// A crash during a compaction leaves a partial copy next to the store; the next open removes
/// it and the store holds everything it held.
#[test]
fn a_partial_compaction_copy_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let copy = dir.path().join("state.redb.compacting");
    let store = open_with_bucket(&path);
    store
        .apply(
            &put("b", "k", "v", Expect::Any),
            Stamp { rev: 2, time_ms: 0 },
        )
        .unwrap();
    let before = dump(&store);
    drop(store);
    std::fs::write(&copy, b"half a copy").unwrap();
    let store = Store::open(Config::new(&path)).unwrap();
    assert!(!copy.exists());
    assert_eq!(dump(&store), before);
}

/// A file with a table this version does not know is not rebuilt (the copy would drop it):
/// a clear error, no copy left behind, the store unchanged and still writable.
#[test]
fn compaction_refuses_a_file_with_an_unknown_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = open_with_bucket(&path);
    drop(store);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let extra: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("extra");
            txn.open_table(extra).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut store = Store::open(Config::new(&path)).unwrap();
    let before = dump(&store);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let err = store.compact().unwrap_err();
    assert!(
        matches!(&err, Error::UnknownTable { name } if name == "extra"),
        "{err}"
    );
    assert!(err.to_string().contains("\"extra\""), "{err}");
    assert!(!dir.path().join("state.redb.compacting").exists());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
    assert_eq!(dump(&store), before);
    store
        .apply(
            &put("b", "k", "v", Expect::Any),
            Stamp { rev: 2, time_ms: 0 },
        )
        .unwrap();
}
