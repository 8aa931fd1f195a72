//! What the fuzz targets share: ops drawn from small domains, so that arbitrary input keeps
//! hitting the same few buckets and keys and every interaction between ops comes up.

use arbitrary::{Result, Unstructured};
use metakv_store::{BucketState, Expect, Op, Record, TombstoneRef};

pub const BUCKETS: [&str; 3] = ["a", "b", "_sys"];
pub const KEYS: [&[u8]; 4] = [b"k0", b"k1", b"key-2", b"\x00\xff"];

pub fn bucket(u: &mut Unstructured) -> Result<String> {
    Ok((*u.choose(&BUCKETS)?).to_owned())
}

pub fn key(u: &mut Unstructured) -> Result<Vec<u8>> {
    // Mostly the shared keys; now and then anything, empty and oversized included.
    if u.ratio(1, 16)? {
        let len = u.int_in_range(0..=1100)?;
        return Ok(vec![u.arbitrary::<u8>()?; len]);
    }
    Ok(u.choose(&KEYS)?.to_vec())
}

pub fn expect(u: &mut Unstructured, rev_max: u64) -> Result<Expect> {
    Ok(match u.int_in_range(0..=3)? {
        0 | 1 => Expect::Any,
        2 => Expect::Absent,
        _ => Expect::Rev(u.int_in_range(0..=rev_max)?),
    })
}

pub fn state(u: &mut Unstructured) -> Result<BucketState> {
    u.choose(&[
        BucketState::Active,
        BucketState::Pausing,
        BucketState::Paused,
        BucketState::Resuming,
    ])
    .copied()
}

/// Any op, with revisions guessed below `rev_max` (the ops applied so far).
pub fn op(u: &mut Unstructured, rev_max: u64) -> Result<Op> {
    Ok(match u.int_in_range(0..=10)? {
        0 => Op::CreateBucket { bucket: bucket(u)? },
        1 => Op::DropBucket { bucket: bucket(u)? },
        2 => Op::SetBucketState {
            bucket: bucket(u)?,
            state: state(u)?,
        },
        3 | 4 => Op::Put {
            bucket: bucket(u)?,
            key: key(u)?,
            value: vec![u.arbitrary::<u8>()?; u.int_in_range(0..=64)?],
            expect: expect(u, rev_max)?,
        },
        5 | 6 => Op::Delete {
            bucket: bucket(u)?,
            key: key(u)?,
            expect: expect(u, rev_max)?,
        },
        7 => {
            let n = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(TombstoneRef {
                    bucket: bucket(u)?,
                    key: key(u)?,
                    rev: u.int_in_range(0..=rev_max)?,
                });
            }
            Op::Purge { items }
        }
        8 => Op::DropBucketData { bucket: bucket(u)? },
        9 => Op::Hibernate {
            bucket: bucket(u)?,
            state: state(u)?,
            drop_data: u.arbitrary()?,
            record: vec![u.arbitrary::<u8>()?; u.int_in_range(0..=16)?],
            expect: expect(u, rev_max)?,
        },
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut records = Vec::with_capacity(n);
            for _ in 0..n {
                let deleted = u.arbitrary()?;
                let rev = u.int_in_range(1..=rev_max.max(1))?;
                records.push((
                    key(u)?,
                    Record {
                        value: if deleted { Vec::new() } else { vec![7; 3] },
                        rev,
                        create_rev: u.int_in_range(1..=rev)?,
                        version: u.int_in_range(1..=3)?,
                        mtime_ms: u.arbitrary()?,
                        deleted,
                    },
                ));
            }
            Op::Restore {
                bucket: bucket(u)?,
                records,
            }
        }
    })
}
