//! Random sequences of store operations checked against a `BTreeMap` model after every step.
//!
//! Besides plain puts and deletes, a sequence may collect tombstones, keep writing (re-putting
//! and re-deleting some of the collected keys), and only then purge what it collected: the GC
//! correctness cases. After every purge, no live record and no tombstone with another revision
//! may be gone. Buckets are paused and resumed through a real archive, emptied, dropped; the
//! store is compacted and reopened; and the store's own check must stay clean.

mod model_harness;
use model_harness::{BUCKETS, ExpectPick, Harness, KEYS, Step};
use proptest::prelude::*;

fn step() -> impl Strategy<Value = Step> {
    let b = 0..BUCKETS.len();
    let k = 0..KEYS.len();
    let expect = prop_oneof![
        3 => Just(ExpectPick::Any),
        1 => Just(ExpectPick::Absent),
        1 => Just(ExpectPick::CurrentRev),
        1 => (0u64..50).prop_map(ExpectPick::OtherRev),
    ];
    prop_oneof![
        2 => b.clone().prop_map(Step::Create),
        1 => b.clone().prop_map(Step::Drop),
        12 => (b.clone(), k.clone(), any::<u8>(), expect.clone()).prop_map(|(b, k, v, e)| Step::Put(b, k, v, e)),
        8 => (b.clone(), k.clone(), expect).prop_map(|(b, k, e)| Step::Delete(b, k, e)),
        3 => (0u64..3000).prop_map(Step::Collect),
        3 => proptest::collection::vec((b.clone(), k, 0u64..60), 0..3).prop_map(Step::PurgeCollected),
        1 => b.clone().prop_map(Step::PauseResume),
        1 => b.prop_map(Step::EmptyViaPause),
        1 => Just(Step::Compact),
        1 => Just(Step::Reopen),
        2 => (1u64..2000).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(steps in proptest::collection::vec(step(), 1..80)) {
        let mut h = Harness::new(tempfile::tempdir().unwrap());
        for step in &steps {
            h.run(step);
            h.compare();
        }
        let report = h.check();
        prop_assert!(report.is_ok(), "{:?}", report);
    }
}
