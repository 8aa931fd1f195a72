//! Hibernation: what a paused bucket's archive promises (its [`Manifest`]), the record each
//! pause or resume leaves in `_sys` ([`HibernationRecord`]), and the janitor's decisions.
//!
//! A pause or a resume is a straight line of steps run by one task on the leader; what must be
//! right whatever crashes where is decided here, without I/O:
//!
//! - every step is one `Op::Hibernate` entry that carries the next record and expects the
//!   revision of the one before, so a step of an operation that was rolled back cannot land;
//! - [`Manifest::check_chunk`] and [`Manifest::check_end`] decide whether an archive read back
//!   is the archive that was written;
//! - [`janitor`] decides what to do with a bucket whose operation no longer runs.
//!
//! ```text
//!  pause:  Active ──Pausing(op)──> export ──> manifest ──> read back, verify ──> drop data ──> Paused
//!            ^                        any failure, or the leader gone: objects deleted ─┘
//!            └──────────────────────────────────── rolled back ──────────────────────┘
//!  resume: Paused ──Resuming(op)──> check manifest ──> restore chunks (each crc checked) ──> Active
//!            ^                        any failure, or the leader gone: partial restore dropped
//!            └──────────────────────────────────── rolled back ──────────────────────┘
//! ```

use std::fmt;

use metakv_store::BucketState;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// Name of the archive object under an operation's prefix.
pub const ARCHIVE_OBJECT: &str = "archive.mkva";
/// Name of the manifest object under an operation's prefix.
pub const MANIFEST_OBJECT: &str = "manifest.json";

/// An operation's id: the leader's term and a sequence within it, unique across leaders.
/// Object names carry it, so two attempts never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    pub term: u64,
    pub seq: u64,
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.seq)
    }
}

impl OpId {
    /// Where an operation's objects live inside its archive location: `<bucket>/<op>`.
    pub fn prefix(self, bucket: &str) -> String {
        format!("{bucket}/{}-{}", self.term, self.seq)
    }
}

/// One chunk of records as written: checked again when read back and when restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    pub records: u64,
    /// Frame bytes, header included.
    pub bytes: u64,
    pub crc32: u32,
}

/// What an archive holds, written next to it and kept in the bucket's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The store's archive format the archive object is in.
    pub archive_format: u32,
    pub bucket: String,
    pub op: OpId,
    /// The store's revision the archive was taken at.
    pub rev: u64,
    /// Records and tombstones.
    pub records: u64,
    /// Bytes of the archive object.
    pub bytes: u64,
    pub chunks: Vec<ChunkEntry>,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifests encode")
    }

    /// Parses a manifest object and checks that this build can read it and that it is the
    /// manifest of `bucket`.
    pub fn from_json(
        bytes: &[u8],
        bucket: &str,
        archive_format: u32,
    ) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format {
                found: m.format,
                reads: MANIFEST_FORMAT,
            });
        }
        if m.archive_format != archive_format {
            return Err(ManifestError::ArchiveFormat {
                found: m.archive_format,
                reads: archive_format,
            });
        }
        if m.bucket != bucket {
            return Err(ManifestError::OtherBucket {
                found: m.bucket,
                wanted: bucket.to_owned(),
            });
        }
        let records = m
            .chunks
            .iter()
            .try_fold(0u64, |sum, c| sum.checked_add(c.records));
        if records != Some(m.records) {
            return Err(ManifestError::Total {
                chunks: records,
                total: m.records,
            });
        }
        Ok(m)
    }

    /// Checks chunk `index` as read back: its record count, size and crc.
    pub fn check_chunk(&self, index: usize, chunk: ChunkEntry) -> Result<(), ManifestError> {
        match self.chunks.get(index) {
            None => Err(ManifestError::ExtraChunk {
                index,
                listed: self.chunks.len(),
            }),
            Some(want) if *want != chunk => Err(ManifestError::ChunkDiffers {
                index,
                read: chunk,
                listed: *want,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Checks an archive read to its end: the header's revision, and that every chunk of the
    /// manifest was there.
    pub fn check_end(&self, rev: u64, chunks: usize, records: u64) -> Result<(), ManifestError> {
        if rev != self.rev {
            return Err(ManifestError::Rev {
                archive: rev,
                manifest: self.rev,
            });
        }
        if chunks != self.chunks.len() || records != self.records {
            return Err(ManifestError::Short {
                chunks,
                records,
                listed_chunks: self.chunks.len(),
                listed_records: self.records,
            });
        }
        Ok(())
    }
}

/// Why a manifest, or an archive read against it, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("unreadable manifest: {0}")]
    Unreadable(String),
    #[error("manifest format {found} (this build reads {reads})")]
    Format { found: u32, reads: u32 },
    #[error("archive format {found} (this build reads {reads})")]
    ArchiveFormat { found: u32, reads: u32 },
    #[error("the manifest is of bucket {found:?}, not {wanted:?}")]
    OtherBucket { found: String, wanted: String },
    #[error(
        "the manifest's chunks hold {} records, its total says {total}",
        chunks.map_or_else(|| "more than 2^64".to_owned(), |r| r.to_string())
    )]
    Total { chunks: Option<u64>, total: u64 },
    #[error("chunk {index} is not in the manifest (it lists {listed})")]
    ExtraChunk { index: usize, listed: usize },
    #[error(
        "chunk {index} differs from the manifest: read {} records, {} bytes, crc {:08x}; \
         the manifest says {} records, {} bytes, crc {:08x}",
        read.records, read.bytes, read.crc32, listed.records, listed.bytes, listed.crc32
    )]
    ChunkDiffers {
        index: usize,
        read: ChunkEntry,
        listed: ChunkEntry,
    },
    #[error("the archive was taken at revision {archive}; the manifest says {manifest}")]
    Rev { archive: u64, manifest: u64 },
    #[error(
        "read {chunks} chunks and {records} records; the manifest lists {listed_chunks} and {listed_records}"
    )]
    Short {
        chunks: usize,
        records: u64,
        listed_chunks: usize,
        listed_records: u64,
    },
}

/// Pause or resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    Pause,
    Resume,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Pause => "pause",
            OpKind::Resume => "resume",
        }
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Running,
    Done,
    /// It failed or was interrupted and was undone; the record's `error` says why.
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::RolledBack => "rolled back",
        }
    }
}

/// A bucket's record in `_sys` (key `metakv_store::hibernation_key`): its last pause or
/// resume, and where its data is while it is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HibernationRecord {
    pub op: OpId,
    pub kind: OpKind,
    pub phase: Phase,
    /// The archive location as given (`file:///dir`, a plain path, or `s3://bucket/prefix`).
    pub archive: String,
    /// The objects of the archive holding the bucket's data, under `archive`: the pause's
    /// [`OpId::prefix`].
    pub objects: String,
    /// The manifest of that archive, once a pause has verified it.
    pub manifest: Option<Manifest>,
    /// Leader's clock, ms since the epoch.
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub error: Option<String>,
}

impl HibernationRecord {
    /// The record a pause starts with.
    pub fn pause(op: OpId, bucket: &str, archive: &str, now_ms: u64) -> HibernationRecord {
        HibernationRecord {
            op,
            kind: OpKind::Pause,
            phase: Phase::Running,
            archive: archive.to_owned(),
            objects: op.prefix(bucket),
            manifest: None,
            started_ms: now_ms,
            finished_ms: None,
            error: None,
        }
    }

    /// The record a resume of a paused bucket starts with: the paused data's location and
    /// manifest carry over, so a rolled-back resume can be tried again. `archive` moves the
    /// location (the same objects, somewhere else).
    pub fn resume(&self, op: OpId, archive: Option<&str>, now_ms: u64) -> HibernationRecord {
        HibernationRecord {
            op,
            kind: OpKind::Resume,
            phase: Phase::Running,
            archive: archive.map_or_else(|| self.archive.clone(), str::to_owned),
            objects: self.objects.clone(),
            manifest: self.manifest.clone(),
            started_ms: now_ms,
            finished_ms: None,
            error: None,
        }
    }

    pub fn done(&self, manifest: Option<Manifest>, now_ms: u64) -> HibernationRecord {
        HibernationRecord {
            phase: Phase::Done,
            manifest: manifest.or_else(|| self.manifest.clone()),
            finished_ms: Some(now_ms),
            error: None,
            ..self.clone()
        }
    }

    pub fn rolled_back(&self, error: &str, now_ms: u64) -> HibernationRecord {
        HibernationRecord {
            phase: Phase::RolledBack,
            finished_ms: Some(now_ms),
            error: Some(error.to_owned()),
            ..self.clone()
        }
    }

    /// The bucket state each end of this operation leaves.
    pub fn end_state(&self) -> BucketState {
        match (self.kind, self.phase) {
            (OpKind::Pause, Phase::Done) | (OpKind::Resume, Phase::RolledBack) => {
                BucketState::Paused
            }
            (OpKind::Pause, Phase::RolledBack) | (OpKind::Resume, Phase::Done) => {
                BucketState::Active
            }
            (OpKind::Pause, Phase::Running) => BucketState::Pausing,
            (OpKind::Resume, Phase::Running) => BucketState::Resuming,
        }
    }

    /// The record as stored in `_sys`: sealed, format
    /// [`HIBERNATION_RECORD_FORMAT`](crate::HIBERNATION_RECORD_FORMAT).
    pub fn encode(&self) -> Vec<u8> {
        crate::format::seal(crate::HIBERNATION_RECORD_FORMAT, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<HibernationRecord, crate::FormatError> {
        crate::format::unseal(
            "hibernation record",
            crate::HIBERNATION_RECORD_FORMAT,
            bytes,
        )
    }
}

/// A bucket as the janitor sees it: its state, its record (with the record's revision) and
/// whether this leader runs an operation on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub bucket: String,
    pub state: BucketState,
    pub record: Option<(HibernationRecord, u64)>,
    pub running: bool,
}

/// What the janitor does about one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// An interrupted pause: delete the objects under `objects`, then write `record` (rolled
    /// back) with the bucket back to `Active`, expecting the record at `expect`.
    RollBackPause {
        bucket: String,
        archive: String,
        objects: String,
        record: HibernationRecord,
        expect: u64,
    },
    /// An interrupted resume: drop the partial restore and write `record` (rolled back) with
    /// the bucket back to `Paused`.
    RollBackResume {
        bucket: String,
        record: HibernationRecord,
        expect: u64,
    },
    /// A paused bucket: check that its archive is still there (never drop anything further).
    CheckArchive {
        bucket: String,
        record: HibernationRecord,
        expect: u64,
    },
    /// A bucket in a hibernation state with no usable record: nothing can be done safely,
    /// say so loudly.
    Report { bucket: String, problem: String },
}

/// Why the janitor rolled an operation back.
pub const INTERRUPTED: &str =
    "interrupted: the operation stopped running (leader change or crash) and was rolled back";

/// The janitor's decisions for the buckets it sees, in bucket order.
/// How to roll back `bucket`'s running operation `record` (at revision `rev`) that failed with
/// `error`: a pause deletes its objects and leaves the bucket `Active`; a resume drops what it
/// restored and leaves it `Paused`. The one rollback decision, for an operation that failed
/// where it ran and for one the janitor finds interrupted.
pub fn rollback(
    bucket: &str,
    record: &HibernationRecord,
    rev: u64,
    error: &str,
    now_ms: u64,
) -> Repair {
    let back = record.rolled_back(error, now_ms);
    match record.kind {
        OpKind::Pause => Repair::RollBackPause {
            bucket: bucket.to_owned(),
            archive: record.archive.clone(),
            objects: record.objects.clone(),
            record: back,
            expect: rev,
        },
        OpKind::Resume => Repair::RollBackResume {
            bucket: bucket.to_owned(),
            record: back,
            expect: rev,
        },
    }
}

pub fn janitor(seen: &[Seen], now_ms: u64) -> Vec<Repair> {
    let mut out = Vec::new();
    for s in seen {
        if s.running {
            continue;
        }
        let bucket = s.bucket.clone();
        // A record is trusted only when it is the one this state implies: `Op::Hibernate`
        // writes both in one entry, so anything else means the store was changed some other
        // way, and guessing would risk the data.
        let fits = |r: &HibernationRecord| match s.state {
            BucketState::Pausing => (r.kind, r.phase) == (OpKind::Pause, Phase::Running),
            BucketState::Resuming => (r.kind, r.phase) == (OpKind::Resume, Phase::Running),
            BucketState::Paused => {
                r.phase != Phase::Running && r.end_state() == BucketState::Paused
            }
            BucketState::Active => true,
        };
        match (s.state, &s.record) {
            (BucketState::Active, _) => {}
            (state, Some((r, _))) if !fits(r) => out.push(Repair::Report {
                bucket,
                problem: format!(
                    "bucket is {state} and its record is a {} {}",
                    r.kind.as_str(),
                    r.phase.as_str()
                ),
            }),
            // `fits` holds: the record is the running pause or resume the state implies.
            (BucketState::Pausing | BucketState::Resuming, Some((r, rev))) => {
                out.push(rollback(&bucket, r, *rev, INTERRUPTED, now_ms))
            }
            (BucketState::Paused, Some((r, rev))) if r.manifest.is_some() => {
                out.push(Repair::CheckArchive {
                    bucket,
                    record: r.clone(),
                    expect: *rev,
                })
            }
            (state, record) => out.push(Repair::Report {
                bucket,
                problem: match record {
                    None => format!("bucket is {state} and has no hibernation record"),
                    Some(_) => format!("bucket is {state} and its record names no archive"),
                },
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            archive_format: 1,
            bucket: "b".into(),
            op: OpId { term: 2, seq: 1 },
            rev: 40,
            records: 5,
            bytes: 300,
            chunks: vec![
                ChunkEntry {
                    records: 3,
                    bytes: 200,
                    crc32: 7,
                },
                ChunkEntry {
                    records: 2,
                    bytes: 80,
                    crc32: 9,
                },
            ],
        }
    }

    #[test]
    fn manifests_round_trip_and_refuse_what_they_do_not_describe() {
        let m = manifest();
        assert_eq!(Manifest::from_json(&m.to_json(), "b", 1).unwrap(), m);
        assert!(matches!(
            Manifest::from_json(&m.to_json(), "c", 1),
            Err(ManifestError::OtherBucket { .. })
        ));
        let e = Manifest::from_json(&m.to_json(), "b", 2).unwrap_err();
        assert_eq!(e, ManifestError::ArchiveFormat { found: 1, reads: 2 });
        assert!(e.to_string().contains("archive format 1"), "{e}");
        let newer = Manifest {
            format: MANIFEST_FORMAT + 1,
            ..m.clone()
        };
        assert!(matches!(
            Manifest::from_json(&newer.to_json(), "b", 1),
            Err(ManifestError::Format { .. })
        ));
        let short = Manifest {
            records: 6,
            ..m.clone()
        };
        assert!(matches!(
            Manifest::from_json(&short.to_json(), "b", 1),
            Err(ManifestError::Total { .. })
        ));
        assert!(matches!(
            Manifest::from_json(b"{not json", "b", 1),
            Err(ManifestError::Unreadable(_))
        ));
        // Chunk counts that overflow a u64 when added are refused, not a panic.
        let overflow = Manifest {
            records: 1,
            chunks: vec![
                ChunkEntry {
                    records: u64::MAX,
                    ..m.chunks[0]
                },
                ChunkEntry {
                    records: 2,
                    ..m.chunks[1]
                },
            ],
            ..m.clone()
        };
        let e = Manifest::from_json(&overflow.to_json(), "b", 1).unwrap_err();
        assert!(e.to_string().contains("more than 2^64"), "{e}");

        m.check_chunk(0, m.chunks[0]).unwrap();
        let flipped = ChunkEntry {
            crc32: 8,
            ..m.chunks[1]
        };
        let e = m.check_chunk(1, flipped).unwrap_err();
        assert!(matches!(e, ManifestError::ChunkDiffers { index: 1, .. }));
        assert!(e.to_string().contains("crc 00000008"), "{e}");
        assert!(m.check_chunk(2, m.chunks[0]).is_err());
        m.check_end(40, 2, 5).unwrap();
        assert!(m.check_end(41, 2, 5).is_err());
        assert!(m.check_end(40, 1, 3).is_err());
    }

    #[test]
    fn records_carry_the_paused_data_through_resumes() {
        let op = OpId { term: 3, seq: 1 };
        let p = HibernationRecord::pause(op, "users", "file:///a", 10);
        assert_eq!(p.objects, "users/3-1");
        assert_eq!(p.end_state(), BucketState::Pausing);
        let paused = p.done(Some(manifest()), 20);
        assert_eq!(paused.end_state(), BucketState::Paused);
        let r = paused.resume(OpId { term: 4, seq: 1 }, Some("file:///moved"), 30);
        assert_eq!(
            (r.objects.as_str(), r.archive.as_str(), r.manifest.is_some()),
            ("users/3-1", "file:///moved", true)
        );
        assert_eq!(r.end_state(), BucketState::Resuming);
        let back = r.rolled_back("crc", 40);
        assert_eq!(back.end_state(), BucketState::Paused);
        assert_eq!(
            back.manifest, paused.manifest,
            "a failed resume keeps the way back"
        );
        assert_eq!(r.done(None, 50).end_state(), BucketState::Active);
        assert_eq!(p.rolled_back("x", 11).end_state(), BucketState::Active);
        assert_eq!(HibernationRecord::decode(&back.encode()).unwrap(), back);
        assert!(HibernationRecord::decode(&[0xff; 3]).is_err());
        // Sealed: a flipped bit, a bare postcard body (the unsealed layout) and a record of
        // the other kind are all refused by name.
        let sealed = back.encode();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(HibernationRecord::decode(&bad).is_err(), "bit flip at {i}");
        }
        let bare = &sealed[1..sealed.len() - 4];
        let e = HibernationRecord::decode(bare).unwrap_err();
        assert!(
            e.to_string().contains("hibernation record is unreadable"),
            "{e}"
        );
    }

    #[test]
    fn the_janitor_rolls_back_what_no_longer_runs_and_never_drops_a_paused_bucket() {
        let op = OpId { term: 1, seq: 1 };
        let pausing = HibernationRecord::pause(op, "a", "file:///x", 1);
        let paused = pausing.done(Some(manifest()), 2);
        let resuming = paused.resume(OpId { term: 1, seq: 2 }, None, 3);
        let seen = |bucket: &str, state, record: Option<&HibernationRecord>, running| Seen {
            bucket: bucket.into(),
            state,
            record: record.map(|r| (r.clone(), 9)),
            running,
        };
        let plan = janitor(
            &[
                seen("a", BucketState::Pausing, Some(&pausing), false),
                seen("b", BucketState::Pausing, Some(&pausing), true),
                seen("c", BucketState::Resuming, Some(&resuming), false),
                seen("d", BucketState::Paused, Some(&paused), false),
                seen("e", BucketState::Active, Some(&paused), false),
                seen("f", BucketState::Paused, None, false),
                seen("g", BucketState::Paused, Some(&pausing), false),
                seen("h", BucketState::Pausing, Some(&resuming), false),
                seen("i", BucketState::Resuming, Some(&paused), false),
            ],
            100,
        );
        assert_eq!(plan.len(), 7, "{plan:?}");
        let Repair::RollBackPause {
            bucket,
            objects,
            record,
            expect,
            ..
        } = &plan[0]
        else {
            panic!("{:?}", plan[0])
        };
        assert_eq!(
            (bucket.as_str(), objects.as_str(), *expect),
            ("a", "a/1-1", 9)
        );
        assert_eq!(record.end_state(), BucketState::Active);
        assert_eq!(record.error.as_deref(), Some(INTERRUPTED));
        let Repair::RollBackResume { bucket, record, .. } = &plan[1] else {
            panic!("{:?}", plan[1])
        };
        assert_eq!(bucket, "c");
        assert_eq!(record.end_state(), BucketState::Paused);
        assert!(record.manifest.is_some());
        assert!(matches!(&plan[2], Repair::CheckArchive { bucket, .. } if bucket == "d"));
        assert!(matches!(&plan[3], Repair::Report { bucket, .. } if bucket == "f"));
        assert!(matches!(&plan[4], Repair::Report { bucket, .. } if bucket == "g"));
        // A state and a record that `Op::Hibernate` would never have written together are
        // reported, not repaired: rolling back a resume as if it were a pause would make the
        // paused (dropped) bucket `Active` and empty.
        for (i, bucket, problem) in [
            (
                5,
                "h",
                "bucket is pausing and its record is a resume running",
            ),
            (6, "i", "bucket is resuming and its record is a pause done"),
        ] {
            assert_eq!(
                plan[i],
                Repair::Report {
                    bucket: bucket.into(),
                    problem: problem.into()
                }
            );
        }
    }

    #[test]
    fn a_failed_operation_is_rolled_back_as_the_janitor_would() {
        let pausing = HibernationRecord::pause(OpId { term: 2, seq: 1 }, "a", "file:///x", 1);
        let resuming = pausing
            .done(Some(manifest()), 2)
            .resume(OpId { term: 2, seq: 2 }, None, 3);
        assert_eq!(
            rollback("a", &pausing, 7, "disk full", 50),
            Repair::RollBackPause {
                bucket: "a".into(),
                archive: "file:///x".into(),
                objects: "a/2-1".into(),
                record: pausing.rolled_back("disk full", 50),
                expect: 7,
            }
        );
        assert_eq!(
            rollback("a", &resuming, 8, "crc", 60),
            Repair::RollBackResume {
                bucket: "a".into(),
                record: resuming.rolled_back("crc", 60),
                expect: 8,
            }
        );
        // The janitor's repair of an interrupted one is the same, with its own reason.
        let seen = Seen {
            bucket: "a".into(),
            state: BucketState::Resuming,
            record: Some((resuming.clone(), 8)),
            running: false,
        };
        assert_eq!(
            janitor(&[seen], 60),
            vec![rollback("a", &resuming, 8, INTERRUPTED, 60)]
        );
    }
}
