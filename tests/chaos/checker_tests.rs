//! The checker against synthetic histories: each kind of violation is caught, and histories
//! that have a linearization (writes of unknown outcome included) pass.

use std::collections::BTreeMap;
use std::time::Duration;

use metakv::Expect;

use crate::checker::{Kind, check};
use crate::history::{Call, Event, Outcome, Seen, WatchLog};

#[derive(Default)]
struct H {
    events: Vec<Event>,
    finals: BTreeMap<String, Option<Seen>>,
    watches: Vec<WatchLog>,
}

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

fn seen(value: &str, rev: u64) -> Option<Seen> {
    Some(Seen {
        value: value.into(),
        rev,
        deleted: false,
    })
}

fn tomb(rev: u64) -> Option<Seen> {
    Some(Seen {
        value: String::new(),
        rev,
        deleted: true,
    })
}

impl H {
    fn op(&mut self, call: Call, outcome: Outcome, from: u64, to: u64) -> &mut H {
        self.events.push(Event {
            client: self.events.len() % 3,
            node: 0,
            call,
            outcome,
            invoked: ms(from),
            completed: ms(to),
        });
        self
    }
    fn put(&mut self, value: &str, expect: Expect, outcome: Outcome, from: u64, to: u64) -> &mut H {
        let call = Call::Put {
            key: "k".into(),
            value: value.into(),
            expect,
        };
        self.op(call, outcome, from, to)
    }
    fn del(&mut self, expect: Expect, outcome: Outcome, from: u64, to: u64) -> &mut H {
        let call = Call::Delete {
            key: "k".into(),
            expect,
        };
        self.op(call, outcome, from, to)
    }
    fn get(&mut self, got: Option<Seen>, from: u64, to: u64) -> &mut H {
        let call = Call::Get {
            key: "k".into(),
            linearizable: true,
            scan: false,
        };
        self.op(call, Outcome::Read(got), from, to)
    }
    fn local_get(&mut self, got: Option<Seen>, from: u64, to: u64) -> &mut H {
        let call = Call::Get {
            key: "k".into(),
            linearizable: false,
            scan: false,
        };
        self.op(call, Outcome::Read(got), from, to)
    }
    fn fin(&mut self, s: Option<Seen>) -> &mut H {
        self.finals.insert("k".into(), s);
        self
    }
    fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = check(&self.events, &self.finals, &self.watches)
            .into_iter()
            .map(|v| v.kind)
            .collect();
        k.sort();
        k.dedup();
        k
    }
}

fn w(rev: u64) -> Outcome {
    Outcome::Written { rev }
}

fn unknown() -> Outcome {
    Outcome::Unknown("timed out".into())
}

/// A history with everything in it, linearizable: the base the violations are made from.
fn good() -> H {
    let mut h = H::default();
    h.put("a", Expect::Absent, w(10), 0, 5)
        .get(seen("a", 10), 6, 7)
        .put("b", Expect::Rev(10), w(12), 8, 9)
        .put(
            "x",
            Expect::Rev(10),
            Outcome::Conflict { current: Some(12) },
            10,
            11,
        )
        .local_get(seen("a", 10), 12, 13)
        .del(Expect::Any, w(15), 14, 16)
        .get(tomb(15), 17, 18)
        .del(Expect::Any, Outcome::NotFound, 19, 20)
        .put("c", Expect::Absent, w(21), 21, 22)
        .fin(seen("c", 21));
    h
}

#[test]
fn a_linearizable_history_passes() {
    assert_eq!(good().kinds(), vec![]);
}

#[test]
fn writes_of_unknown_outcome_may_have_happened_or_not() {
    let mut h = good();
    // Seen later, at the revision it must have had: it happened.
    h.put("d", Expect::Any, unknown(), 30, 40)
        .get(seen("d", 35), 41, 42);
    // Never seen: it may not have happened.
    h.put("e", Expect::Any, unknown(), 43, 44)
        .fin(seen("d", 35));
    assert_eq!(h.kinds(), vec![]);
    // A read of nothing explained by a delete of unknown outcome.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1)
        .del(Expect::Any, unknown(), 2, 9)
        .get(None, 10, 11);
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn a_write_of_unknown_outcome_may_take_effect_after_its_client_gave_up() {
    // The client timed out at 5; the write was applied later, after writes and reads that
    // began once it had given up. Found by a soak: the checker took the answer's time as a
    // bound on the write, reported a false violation, and panicked on the empty window.
    let mut h = H::default();
    h.put("a", Expect::Any, unknown(), 0, 5)
        .get(None, 6, 7)
        .put("b", Expect::Any, w(20), 8, 9)
        .get(seen("b", 20), 10, 11)
        .get(seen("a", 22), 30, 31)
        .fin(seen("a", 22));
    assert_eq!(h.kinds(), vec![]);
}

#[test]
fn a_tombstone_goes_to_a_delete_that_can_have_made_it() {
    // Two deletes of unknown outcome; the tombstone at 6 was written before the put at 8
    // completed, so only the first can have made it. Found by a soak: the checker gave it to
    // the first delete in the list, here the later one, and reported writes out of order.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1)
        .del(Expect::Any, unknown(), 40, 45)
        .del(Expect::Any, unknown(), 2, 7)
        .get(tomb(6), 5, 6)
        .put("b", Expect::Any, w(8), 8, 9)
        .fin(seen("b", 8));
    assert_eq!(h.kinds(), vec![]);
    // No delete can have made a tombstone at 6: both were invoked after the put above it
    // completed.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1)
        .put("b", Expect::Any, w(8), 2, 3)
        .del(Expect::Any, unknown(), 10, 15)
        .get(tomb(6), 20, 21);
    assert!(h.kinds().contains(&Kind::UnknownWrite), "{:?}", h.kinds());
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = good();
    h.get(seen("b", 12), 30, 31); // after the delete at 15 and the put at 21
    assert!(h.kinds().contains(&Kind::StaleRead), "{:?}", h.kinds());
    // A read of nothing after an acknowledged put with no delete after it.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1).get(None, 2, 3);
    assert_eq!(h.kinds(), vec![Kind::StaleRead]);
}

#[test]
fn a_read_from_the_future_is_caught() {
    let mut h = H::default();
    h.get(seen("a", 5), 0, 1).put("a", Expect::Any, w(5), 2, 3);
    assert!(h.kinds().contains(&Kind::FutureRead), "{:?}", h.kinds());
    // Local reads may lag, but may not read the future either.
    let mut h = H::default();
    h.local_get(seen("a", 5), 0, 1)
        .put("a", Expect::Any, w(5), 2, 3);
    assert!(h.kinds().contains(&Kind::FutureRead), "{:?}", h.kinds());
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    let mut h = good();
    h.fin(seen("b", 12));
    assert_eq!(h.kinds(), vec![Kind::LostWrite]);
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1).fin(None);
    assert_eq!(h.kinds(), vec![Kind::LostWrite]);
}

#[test]
fn values_and_revisions_that_no_write_explains_are_caught() {
    let mut h = good();
    h.get(seen("nobody", 21), 30, 31);
    assert!(h.kinds().contains(&Kind::UnknownWrite), "{:?}", h.kinds());
    let mut h = good();
    h.get(seen("c", 22), 30, 31);
    assert!(h.kinds().contains(&Kind::RevMismatch), "{:?}", h.kinds());
    let mut h = good();
    h.get(tomb(16), 30, 31);
    assert!(h.kinds().contains(&Kind::UnknownWrite), "{:?}", h.kinds());
}

#[test]
fn a_failed_write_that_is_seen_is_caught() {
    let mut h = good();
    h.put("z", Expect::Any, Outcome::Failed("refused".into()), 30, 31)
        .get(seen("z", 33), 34, 35)
        .fin(seen("z", 33));
    assert!(
        h.kinds().contains(&Kind::FailedWriteSeen),
        "{:?}",
        h.kinds()
    );
}

#[test]
fn writes_out_of_real_time_order_are_caught() {
    let mut h = H::default();
    h.put("a", Expect::Any, w(9), 0, 1)
        .put("b", Expect::Any, w(7), 2, 3)
        .fin(seen("a", 9));
    assert!(h.kinds().contains(&Kind::WriteOrder), "{:?}", h.kinds());
}

#[test]
fn reads_that_go_back_are_caught() {
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1)
        .put("b", Expect::Any, w(5), 2, 20)
        .get(seen("b", 5), 3, 4)
        .get(seen("a", 3), 5, 6);
    assert!(
        h.kinds().contains(&Kind::NonMonotonicRead),
        "{:?}",
        h.kinds()
    );
}

#[test]
fn broken_expectations_are_caught() {
    // Took effect expecting 10, though 12 came between.
    let mut h = good();
    h.put("y", Expect::Rev(10), w(30), 29, 31)
        .fin(seen("y", 30));
    assert_eq!(h.kinds(), vec![Kind::Expectation]);
    // Took effect expecting no live record, over a live put.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1)
        .put("b", Expect::Absent, w(5), 2, 3)
        .fin(seen("b", 5));
    assert_eq!(h.kinds(), vec![Kind::Expectation]);
    // Refused though the expectation held.
    let mut h = H::default();
    h.put("a", Expect::Any, w(3), 0, 1).put(
        "b",
        Expect::Rev(3),
        Outcome::Conflict { current: Some(3) },
        2,
        3,
    );
    assert_eq!(h.kinds(), vec![Kind::Expectation]);
}

#[test]
fn watch_events_out_of_order_or_missing_are_caught() {
    let mut h = good();
    h.watches.push(WatchLog {
        node: 0,
        events: vec![
            ("k".into(), seen("b", 12).unwrap()),
            ("k".into(), seen("a", 10).unwrap()),
        ],
        compacted: Vec::new(),
    });
    let kinds = h.kinds();
    assert!(kinds.contains(&Kind::WatchOrder), "{kinds:?}");
    assert!(kinds.contains(&Kind::WatchMissing), "{kinds:?}");
    // A complete watch passes.
    let mut h = good();
    h.watches.push(WatchLog {
        node: 0,
        events: vec![
            ("k".into(), seen("a", 10).unwrap()),
            ("k".into(), tomb(15).unwrap()),
            ("k".into(), seen("c", 21).unwrap()),
        ],
        compacted: Vec::new(),
    });
    assert_eq!(h.kinds(), vec![]);
}
