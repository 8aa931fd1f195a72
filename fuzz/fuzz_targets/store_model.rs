//! An arbitrary sequence of store operations, run against a real store (a redb file in a
//! temporary directory) and a `BTreeMap` model and compared after every step: the model test of
//! `store/tests/model.rs`, driven by the fuzzer instead of proptest. The steps: create, drop,
//! put and delete with every kind of expectation, tombstone collection, guarded purges of what
//! was collected plus made-up guards, pause and resume through a real archive, emptying a
//! bucket, compaction, reopening. Among the model's checks: a guarded purge never removes a live
//! record or a tombstone with another revision.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../../store/tests/model_harness/mod.rs"]
mod model_harness;
use model_harness::{BUCKETS, ExpectPick, Harness, KEYS, Step};

/// Most steps of one input: enough for long interleavings, few enough to stay fast.
const STEPS_MAX: usize = 64;

fn step(u: &mut Unstructured) -> Result<Step> {
    let b = |u: &mut Unstructured| u.choose_index(BUCKETS.len());
    let k = |u: &mut Unstructured| u.choose_index(KEYS.len());
    let expect = |u: &mut Unstructured| -> Result<ExpectPick> {
        Ok(match u.int_in_range(0..=5)? {
            0..=2 => ExpectPick::Any,
            3 => ExpectPick::Absent,
            4 => ExpectPick::CurrentRev,
            _ => ExpectPick::OtherRev(u.int_in_range(0..=49)?),
        })
    };
    Ok(match u.int_in_range(0..=35)? {
        0..=1 => Step::Create(b(u)?),
        2 => Step::Drop(b(u)?),
        3..=14 => Step::Put(b(u)?, k(u)?, u8::arbitrary(u)?, expect(u)?),
        15..=22 => Step::Delete(b(u)?, k(u)?, expect(u)?),
        23..=25 => Step::Collect(u.int_in_range(0..=2999)?),
        26..=28 => {
            let n = u.int_in_range(0..=2)?;
            let mut guards = Vec::with_capacity(n);
            for _ in 0..n {
                guards.push((b(u)?, k(u)?, u.int_in_range(0..=59)?));
            }
            Step::PurgeCollected(guards)
        }
        29 => Step::PauseResume(b(u)?),
        30 => Step::EmptyViaPause(b(u)?),
        31 => Step::Compact,
        32 => Step::Reopen,
        _ => Step::Tick(u.int_in_range(1..=1999)?),
    })
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let mut steps = Vec::new();
    while steps.len() < STEPS_MAX && !u.is_empty() {
        match step(&mut u) {
            Ok(s) => steps.push(s),
            Err(_) => break,
        }
    }
    if steps.is_empty() {
        return;
    }
    let mut h = Harness::new(tempfile::tempdir().expect("a temporary directory"));
    for s in &steps {
        h.run(s);
        h.compare();
    }
    let report = h.check();
    assert!(report.is_ok(), "{report:?}");
});
