//! The archive format: round trips, and every way a damaged stream is refused without
//! changing the store it was to be imported into.

use std::collections::BTreeMap;

use metakv_store::*;

mod common;
use common::dump;

fn stamp(rev: u64) -> Stamp {
    Stamp { rev, time_ms: rev }
}

/// A store with two buckets, live records, tombstones, meta, and enough records for several chunks.
fn filled(dir: &std::path::Path, name: &str) -> Store {
    let store = Store::open(Config::new(dir.join(name))).unwrap();
    store
        .write(|w| {
            let mut rev = 0;
            let mut next = || {
                rev += 1;
                stamp(rev)
            };
            w.apply(
                &Op::CreateBucket {
                    bucket: "users".into(),
                },
                next(),
            )?;
            w.apply(
                &Op::CreateBucket {
                    bucket: "roles".into(),
                },
                next(),
            )?;
            for i in 0..10_000u32 {
                let op = Op::Put {
                    bucket: "users".into(),
                    key: format!("u{i:05}").into_bytes(),
                    value: vec![(i % 251) as u8; 200],
                    expect: Expect::Any,
                };
                w.apply(&op, next())?;
            }
            for i in (0..10_000u32).step_by(3) {
                w.apply(
                    &Op::Delete {
                        bucket: "users".into(),
                        key: format!("u{i:05}").into_bytes(),
                        expect: Expect::Any,
                    },
                    next(),
                )?;
            }
            w.apply(
                &Op::Put {
                    bucket: "roles".into(),
                    key: b"admin".to_vec(),
                    value: b"all".to_vec(),
                    expect: Expect::Any,
                },
                next(),
            )?;
            w.apply(
                &Op::Put {
                    bucket: "_sys".into(),
                    key: b"gc/job/1".to_vec(),
                    value: b"done".to_vec(),
                    expect: Expect::Any,
                },
                next(),
            )?;
            w.set_meta("raft.applied", b"log id")
        })
        .unwrap();
    store
}

#[test]
fn whole_store_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = filled(dir.path(), "src.redb");
    let mut chunks = 0;
    let (summary, bytes) = src
        .read()
        .unwrap()
        .export(Scope::Store, Vec::new(), |_| chunks += 1)
        .unwrap();
    assert_eq!(summary.buckets, 3);
    assert_eq!(summary.records, 10_000 + 2);
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(summary.chunks.len(), chunks);
    assert!(
        chunks > 2,
        "10,000 records of 200 bytes fill several 1 MiB chunks"
    );
    let dst = Store::open(Config::new(dir.path().join("dst.redb"))).unwrap();
    dst.apply(
        &Op::CreateBucket {
            bucket: "stale".into(),
        },
        stamp(1),
    )
    .unwrap();
    let imported = dst.import(bytes.as_slice()).unwrap();
    assert_eq!(
        (imported.buckets, imported.records, imported.rev),
        (3, 10_002, summary.rev)
    );
    assert_eq!(
        dump(&dst),
        dump(&src),
        "the import replaces everything, the stale bucket included"
    );
    let mut dst = dst;
    assert!(dst.check().unwrap().is_ok());
    // The imported store goes on from the archive's revision.
    assert!(matches!(
        dst.apply(&Op::CreateBucket { bucket: "x".into() }, stamp(summary.rev)),
        Err(Error::StaleRevision { .. })
    ));
}

#[test]
fn bucket_archive_restores_through_ops() {
    let dir = tempfile::tempdir().unwrap();
    let src = filled(dir.path(), "src.redb");
    let (summary, bytes) = src
        .export(Scope::Bucket("users".into()), Vec::new())
        .unwrap();
    assert_eq!((summary.buckets, summary.records), (1, 10_000));
    let mut reader = ArchiveReader::open(bytes.as_slice()).unwrap();
    assert_eq!(reader.scope(), &Scope::Bucket("users".into()));
    let dst = Store::open(Config::new(dir.path().join("dst.redb"))).unwrap();
    let mut rev = summary.rev;
    let mut next = || {
        rev += 1;
        stamp(rev)
    };
    dst.apply(
        &Op::CreateBucket {
            bucket: "users".into(),
        },
        next(),
    )
    .unwrap();
    for s in [
        BucketState::Pausing,
        BucketState::Paused,
        BucketState::Resuming,
    ] {
        dst.apply(
            &Op::SetBucketState {
                bucket: "users".into(),
                state: s,
            },
            next(),
        )
        .unwrap();
    }
    while let Some(frame) = reader.next().unwrap() {
        if let Frame::Records { bucket, records } = frame {
            dst.apply(&Op::Restore { bucket, records }, next()).unwrap();
        }
    }
    dst.apply(
        &Op::SetBucketState {
            bucket: "users".into(),
            state: BucketState::Active,
        },
        next(),
    )
    .unwrap();
    let src_records = dump(&src).records;
    let dst_records = dump(&dst).records;
    let users = |m: BTreeMap<(String, Vec<u8>), Record>| {
        m.into_iter()
            .filter(|((b, _), _)| b == "users")
            .collect::<Vec<_>>()
    };
    assert_eq!(users(dst_records), users(src_records));
    let (a, b) = (src.bucket("users").unwrap(), dst.bucket("users").unwrap());
    assert_eq!((a.records, a.tombstones), (b.records, b.tombstones));
    // A bucket archive cannot replace a whole store.
    assert!(matches!(
        dst.import(bytes.as_slice()),
        Err(Error::Archive { .. })
    ));
}

#[test]
fn damaged_archives_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = filled(dir.path(), "src.redb");
    let (summary, bytes) = src.export(Scope::Store, Vec::new()).unwrap();
    let dst = Store::open(Config::new(dir.path().join("dst.redb"))).unwrap();
    dst.apply(
        &Op::CreateBucket {
            bucket: "keep".into(),
        },
        stamp(1),
    )
    .unwrap();
    dst.apply(
        &Op::Put {
            bucket: "keep".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expect: Expect::Any,
        },
        stamp(2),
    )
    .unwrap();
    let before = dump(&dst);
    let refuse = |input: &[u8], what: &str| {
        let err = dst.import(input).expect_err(what);
        assert!(
            matches!(err, Error::Archive { .. } | Error::ArchiveVersion { .. }),
            "{what}: {err}"
        );
        assert_eq!(dump(&dst), before, "{what} changed the store");
    };
    // Cut at every frame boundary and inside frames.
    let mut cuts = vec![0, 3, 7, 8, 12, bytes.len() - 1];
    let mut at = 8usize;
    while at < bytes.len() {
        cuts.push(at);
        cuts.push(at + 5);
        at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    for cut in cuts.into_iter().filter(|c| *c < bytes.len()) {
        refuse(&bytes[..cut], &format!("cut at {cut}"));
    }
    // One flipped byte in each chunk, in the magic, in the version.
    for chunk_start in [0, 4, 20, bytes.len() / 2, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[chunk_start] ^= 0x40;
        refuse(&bad, &format!("flip at {chunk_start}"));
    }
    let mut future = bytes.clone();
    future[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        dst.import(future.as_slice()),
        Err(Error::ArchiveVersion {
            found: 2,
            supported: 1
        })
    ));
    // Trailing garbage after End.
    let mut trailing = bytes.clone();
    trailing.push(0);
    refuse(&trailing, "trailing byte");
    // A frame claiming more than the limit is refused before it is read.
    let mut huge = bytes[..8].to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 4]);
    refuse(&huge, "oversized frame");
    // A valid archive still imports after all that.
    assert_eq!(
        dst.import(bytes.as_slice()).unwrap().records,
        summary.records
    );
}

#[test]
fn reader_checks_frame_order() {
    let mut w = ArchiveWriter::new(Vec::new(), Scope::Bucket("a".into()), 5, vec![]).unwrap();
    let rec = Record {
        value: b"v".to_vec(),
        rev: 3,
        create_rev: 3,
        version: 1,
        mtime_ms: 0,
        deleted: false,
    };
    w.records("a", vec![(b"k".to_vec(), rec.clone())]).unwrap();
    let (_, bytes) = w.finish().unwrap();
    let mut r = ArchiveReader::open(bytes.as_slice()).unwrap();
    assert!(
        r.next()
            .unwrap_err()
            .to_string()
            .contains("outside its section")
    );

    let mut w = ArchiveWriter::new(Vec::new(), Scope::Bucket("a".into()), 5, vec![]).unwrap();
    w.bucket(
        "b",
        &BucketInfo {
            state: BucketState::Active,
            created_rev: 1,
            purge_floor: 0,
            records: 0,
            tombstones: 0,
        },
    )
    .unwrap();
    let (_, bytes) = w.finish().unwrap();
    let mut r = ArchiveReader::open(bytes.as_slice()).unwrap();
    assert!(
        r.next()
            .unwrap_err()
            .to_string()
            .contains("in an archive of bucket")
    );
    assert!(
        ArchiveReader::open(&b"NOPE\x01\0\0\0"[..])
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
}
