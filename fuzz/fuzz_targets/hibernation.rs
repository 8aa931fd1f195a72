//! Hibernation's decoders and decisions.
//!
//! - Arbitrary bytes as a manifest object (JSON anyone with access to the archive location may
//!   have written): never a panic; an accepted manifest is of the asked bucket, its chunks add
//!   up to its total, it survives a round trip, and it passes its own chunk and end checks.
//! - Arbitrary bytes as a `_sys` hibernation record: never a panic; an accepted record
//!   survives a round trip.
//! - Arbitrary buckets (state, record, running or not) into the janitor: no repair for a
//!   running or active bucket, exactly one for every other, in bucket order; a rollback only
//!   from the state its record describes, and the record it writes ends in the state the
//!   rollback moves the bucket to; a paused bucket is only ever checked, never changed.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use metakv_gc::hibernate::{
    ChunkEntry, HibernationRecord, MANIFEST_FORMAT, Manifest, OpId, OpKind, Phase, Repair, Seen,
    janitor,
};
use metakv_store::BucketState;

const BUCKETS: [&str; 5] = ["a", "b", "c", "d", "e"];

fn manifest_bytes(data: &[u8]) {
    let Ok(m) = Manifest::from_json(data, "a", 1) else {
        return;
    };
    assert_eq!((m.format, m.archive_format, m.bucket.as_str()), (MANIFEST_FORMAT, 1, "a"));
    let sum = m.chunks.iter().map(|c| u128::from(c.records)).sum::<u128>();
    assert_eq!(sum, u128::from(m.records), "accepted chunks that do not add up");
    assert_eq!(Manifest::from_json(&m.to_json(), "a", 1).as_ref(), Ok(&m));
    for (i, c) in m.chunks.iter().enumerate() {
        m.check_chunk(i, *c).unwrap();
    }
    assert!(m.check_chunk(m.chunks.len(), ChunkEntry { records: 0, bytes: 0, crc32: 0 }).is_err());
    m.check_end(m.rev, m.chunks.len(), m.records).unwrap();
    assert!(m.check_end(m.rev.wrapping_add(1), m.chunks.len(), m.records).is_err());
}

fn record_bytes(data: &[u8]) {
    if let Ok(r) = HibernationRecord::decode(data) {
        // Sealed and strict: whatever is accepted re-encodes to exactly the same bytes.
        assert_eq!(r.encode(), data);
        assert_eq!(HibernationRecord::decode(&r.encode()), Ok(r));
    }
}

fn manifest(u: &mut Unstructured, bucket: &str) -> Result<Manifest> {
    let chunks: Vec<ChunkEntry> = (0..u.int_in_range(0..=3)?)
        .map(|_| {
            Ok(ChunkEntry {
                records: u.int_in_range(0..=5)?,
                bytes: u.int_in_range(0..=500)?,
                crc32: u.arbitrary()?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Manifest {
        format: MANIFEST_FORMAT,
        archive_format: 1,
        bucket: bucket.to_owned(),
        op: OpId { term: u.int_in_range(1..=3)?, seq: u.int_in_range(1..=3)? },
        rev: u.int_in_range(0..=100)?,
        records: chunks.iter().map(|c| c.records).sum(),
        bytes: chunks.iter().map(|c| c.bytes).sum(),
        chunks,
    })
}

fn record(u: &mut Unstructured, bucket: &str) -> Result<HibernationRecord> {
    let op = OpId { term: u.int_in_range(1..=3)?, seq: u.int_in_range(1..=3)? };
    let mut r = HibernationRecord::pause(op, bucket, "file:///archives", u.int_in_range(0..=10)?);
    // Any walk through the record's life, and now and then a record no walk makes.
    for _ in 0..u.int_in_range(0..=4)? {
        let now = u.int_in_range(0..=100)?;
        r = match u.int_in_range(0..=3)? {
            0 => r.done(u.arbitrary::<bool>()?.then(|| manifest(u, bucket)).transpose()?, now),
            1 => r.rolled_back("failed", now),
            2 => r.resume(op, u.arbitrary::<bool>()?.then_some("file:///moved"), now),
            _ => HibernationRecord {
                kind: *u.choose(&[OpKind::Pause, OpKind::Resume])?,
                phase: *u.choose(&[Phase::Running, Phase::Done, Phase::RolledBack])?,
                manifest: if u.arbitrary()? { Some(manifest(u, bucket)?) } else { None },
                ..r
            },
        };
    }
    Ok(r)
}

fn janitor_decisions(u: &mut Unstructured) -> Result<()> {
    let mut seen = Vec::new();
    for bucket in BUCKETS {
        if u.arbitrary()? {
            continue;
        }
        let state = *u.choose(&[
            BucketState::Active,
            BucketState::Pausing,
            BucketState::Paused,
            BucketState::Resuming,
        ])?;
        let record = if u.ratio(7, 8)? {
            Some((record(u, bucket)?, u.int_in_range(1..=1000)?))
        } else {
            None
        };
        seen.push(Seen { bucket: bucket.to_owned(), state, record, running: u.arbitrary()? });
    }
    let now = u.int_in_range(0..=1000)?;
    let plan = janitor(&seen, now);

    let due: Vec<&Seen> =
        seen.iter().filter(|s| !s.running && s.state != BucketState::Active).collect();
    assert_eq!(plan.len(), due.len(), "one repair per idle bucket in a hibernation state: {plan:?}");
    for (repair, s) in plan.iter().zip(due) {
        let (current, rev) = match &s.record {
            Some((r, rev)) => (Some(r), *rev),
            None => (None, 0),
        };
        match repair {
            Repair::RollBackPause { bucket, archive, objects, record, expect } => {
                let r = current.expect("a rollback needs the record it rolls back");
                assert_eq!(s.state, BucketState::Pausing);
                assert_eq!((r.kind, r.phase), (OpKind::Pause, Phase::Running));
                assert_eq!((bucket, archive, objects), (&s.bucket, &r.archive, &r.objects));
                assert_eq!((record.op, *expect), (r.op, rev));
                assert_eq!(record.end_state(), BucketState::Active);
            }
            Repair::RollBackResume { bucket, record, expect } => {
                let r = current.expect("a rollback needs the record it rolls back");
                assert_eq!(s.state, BucketState::Resuming);
                assert_eq!((r.kind, r.phase), (OpKind::Resume, Phase::Running));
                assert_eq!((bucket, record.op, *expect), (&s.bucket, r.op, rev));
                assert_eq!(record.end_state(), BucketState::Paused);
                assert_eq!(record.manifest, r.manifest, "a rolled-back resume keeps the way back");
            }
            Repair::CheckArchive { bucket, record, expect } => {
                assert_eq!(s.state, BucketState::Paused);
                assert_eq!((bucket, Some(record), *expect), (&s.bucket, current, rev));
                assert!(record.manifest.is_some(), "a paused bucket's record names its archive");
                assert_eq!(record.end_state(), BucketState::Paused);
            }
            Repair::Report { bucket, problem } => {
                assert_eq!(bucket, &s.bucket);
                assert!(!problem.is_empty());
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => manifest_bytes(rest),
        1 => record_bytes(rest),
        _ => {
            let _ = janitor_decisions(&mut Unstructured::new(rest));
        }
    }
});
