//! The checker: every key's history against a versioned register with compare-and-set.
//!
//! A linearizability search over arbitrary histories is exponential (WGL, porcupine). metakv
//! hands us the order of the writes: a write's revision is its Raft log index. So the search
//! collapses to checks of each operation against that order:
//!
//! 1. **Revisions name writes.** Every put writes a value unique in the run, so a record read
//!    names its write; the write's revision must be the record's (a read of a value never
//!    written, or at another revision, is a violation). A write whose outcome is unknown
//!    takes the revision it was seen at; a write that certainly failed must never be seen.
//! 2. **Real time.** A write that completed before another was invoked has the lower revision.
//! 3. **Reads.** A linearizable read (or the current revision a failed expectation reports)
//!    sees a state no older than every write that completed before it was invoked, and no
//!    newer than any write invoked after it completed. A read of nothing needs a delete (or
//!    nothing at all) at a revision in that window. Two linearizable reads in real-time order
//!    see revisions in that order. A local read may lag, but never reads the future.
//! 4. **Expectations.** A write that expected revision `n` and took effect at `m` had no
//!    known write of the key between them; one that expected no live record had no put as its
//!    latest predecessor. A refusal claimed for an expectation that held is a violation.
//! 5. **Nothing acknowledged is lost.** After healing, each key's final record is at least
//!    as new as its newest acknowledged write.
//! 6. **Watches.** Events come in strictly increasing revision order (so none is repeated),
//!    each names a real write, and after healing each watcher's last event of a key is the
//!    key's final record, unless a `Compacted` answer covered it.
//!
//! Writes whose outcome is unknown and that nobody saw may have happened at any revision;
//! wherever one could explain an observation, the checker gives the history the benefit of
//! the doubt. It never reports a history that has a linearization; it may miss a violation
//! that only an unseen write of unknown outcome could hide.

use std::collections::{BTreeMap, BTreeSet};

use metakv::Expect;

use crate::history::{Call, Event, Outcome, Seen, WatchLog};

/// What kind of promise a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A record read that no write made (an unknown value, or a tombstone no delete made).
    UnknownWrite,
    /// A record read at another revision than its write's, or two writes at one revision.
    RevMismatch,
    /// A write that certainly failed was seen.
    FailedWriteSeen,
    /// Two writes whose revisions contradict their real-time order.
    WriteOrder,
    /// A read older than a write that completed before it began.
    StaleRead,
    /// A read of a write invoked after the read completed.
    FutureRead,
    /// Two linearizable reads, one after the other, that went back in revisions.
    NonMonotonicRead,
    /// A conditional write that took effect though its expectation could not hold, or was
    /// refused though it held.
    Expectation,
    /// An acknowledged write missing after healing.
    LostWrite,
    /// Watch events out of revision order, or repeated.
    WatchOrder,
    /// A watcher whose last event of a key is not the key's final record.
    WatchMissing,
    /// Nodes whose copies differ after healing.
    Diverged,
    /// A fault the cluster did not heal from: a node that would not restart or join, a
    /// member that could not be removed, a paused bucket that would not come back.
    NotHealed,
}

/// One broken promise: what, of which key, and the events involved (indexes into the history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    pub key: String,
    pub message: String,
    pub events: Vec<usize>,
}

/// The state a read-like observation saw: a record at a revision, or no record / no live
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    At(u64),
    /// No record, or (when `tombstone_ok`) a tombstone.
    Nothing,
}

/// Checks a whole run: every key's events, the final record of every key after healing
/// (`None`: no record), and every watcher's log.
pub fn check(
    events: &[Event],
    finals: &BTreeMap<String, Option<Seen>>,
    watches: &[WatchLog],
) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_key.entry(e.call.key()).or_default().push(i);
    }
    let mut keys: BTreeSet<&str> = by_key.keys().copied().collect();
    keys.extend(finals.keys().map(String::as_str));
    let mut out = Vec::new();
    for key in keys {
        let ids = by_key.get(key).cloned().unwrap_or_default();
        let watched: Vec<&Seen> = watches
            .iter()
            .flat_map(|w| w.events.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, s)| s)
            .collect();
        KeyCheck::new(key, events, &ids, &mut out).run(finals.get(key), &watched);
    }
    for w in watches {
        check_watch_order(w, &mut out);
    }
    check_watch_final(watches, finals, &mut out);
    out
}

struct KeyCheck<'a> {
    key: &'a str,
    events: &'a [Event],
    ids: &'a [usize],
    out: &'a mut Vec<Violation>,
    /// Revision of each write known to have taken effect (acknowledged, or seen).
    rev_of: BTreeMap<usize, u64>,
}

impl<'a> KeyCheck<'a> {
    fn new(
        key: &'a str,
        events: &'a [Event],
        ids: &'a [usize],
        out: &'a mut Vec<Violation>,
    ) -> KeyCheck<'a> {
        KeyCheck {
            key,
            events,
            ids,
            out,
            rev_of: BTreeMap::new(),
        }
    }

    fn violation(&mut self, kind: Kind, events: Vec<usize>, message: String) {
        self.out.push(Violation {
            kind,
            key: self.key.to_owned(),
            message,
            events,
        });
    }

    fn writes(&self) -> impl Iterator<Item = usize> + '_ {
        self.ids
            .iter()
            .copied()
            .filter(|&i| self.events[i].call.is_write())
    }

    fn is_unknown(&self, i: usize) -> bool {
        matches!(self.events[i].outcome, Outcome::Unknown(_))
    }

    /// By when write `w` had taken effect, if it did: its answer for an acknowledged write.
    /// A write of unknown outcome may take effect after its client gave up, so its answer
    /// bounds nothing.
    fn effective_by(&self, w: usize) -> std::time::Duration {
        match self.events[w].outcome {
            Outcome::Written { .. } => self.events[w].completed,
            _ => std::time::Duration::MAX,
        }
    }

    /// True if a write of unknown outcome, not yet placed at a revision, invoked before
    /// `before` (a time), could explain what is seen; `deletes_only` for a missing record.
    fn unplaced_could(&self, before: std::time::Duration, deletes_only: bool) -> bool {
        self.writes().any(|w| {
            self.is_unknown(w)
                && !self.rev_of.contains_key(&w)
                && self.events[w].invoked < before
                && (!deletes_only || matches!(self.events[w].call, Call::Delete { .. }))
        })
    }

    fn run(mut self, fin: Option<&Option<Seen>>, watched: &[&Seen]) {
        self.place_writes(fin, watched);
        let known: BTreeMap<u64, usize> = self.rev_of.iter().map(|(&i, &r)| (r, i)).collect();
        self.check_write_order(&known);
        self.check_reads(&known);
        self.check_expectations(&known);
        if let Some(fin) = fin {
            self.check_final(fin.as_ref(), &known);
        }
    }

    /// Step 1: every write's revision, from its acknowledgement or from what was seen.
    fn place_writes(&mut self, fin: Option<&Option<Seen>>, watched: &[&Seen]) {
        for w in self.writes().collect::<Vec<_>>() {
            if let Outcome::Written { rev } = self.events[w].outcome {
                self.rev_of.insert(w, rev);
            }
        }
        let mut seen: Vec<(Option<usize>, Seen)> = Vec::new();
        for &i in self.ids {
            if let Outcome::Read(Some(s)) = &self.events[i].outcome {
                seen.push((Some(i), s.clone()));
            }
        }
        seen.extend(fin.cloned().flatten().map(|s| (None, s)));
        seen.extend(watched.iter().map(|s| (None, (*s).clone())));
        for (by, s) in seen {
            self.place(by, &s);
        }
        // Two writes at one revision.
        let mut at: BTreeMap<u64, usize> = BTreeMap::new();
        for (&w, &r) in &self.rev_of.clone() {
            if let Some(&other) = at.get(&r) {
                self.violation(
                    Kind::RevMismatch,
                    vec![other, w],
                    format!("two writes of the key at revision {r}"),
                );
            }
            at.insert(r, w);
        }
    }

    fn place(&mut self, by: Option<usize>, s: &Seen) {
        let involved = |w: usize| by.into_iter().chain([w]).collect::<Vec<_>>();
        let write = if s.deleted {
            // A tombstone names its delete by revision.
            let known = self.writes().find(|&w| {
                matches!(self.events[w].call, Call::Delete { .. })
                    && self.rev_of.get(&w) == Some(&s.rev)
            });
            known.or_else(|| self.unknown_delete_at(s.rev, by))
        } else {
            self.writes().find(
                |&w| matches!(&self.events[w].call, Call::Put { value, .. } if *value == s.value),
            )
        };
        let Some(w) = write else {
            let what = if s.deleted {
                format!("a tombstone at revision {} that no delete made", s.rev)
            } else {
                format!(
                    "value {:?} at revision {} that no put wrote",
                    s.value, s.rev
                )
            };
            self.violation(Kind::UnknownWrite, by.into_iter().collect(), what);
            return;
        };
        match (&self.events[w].outcome, self.rev_of.get(&w)) {
            (_, Some(&r)) if r != s.rev => self.violation(
                Kind::RevMismatch,
                involved(w),
                format!("seen at revision {}, written at {r}", s.rev),
            ),
            (_, Some(_)) => {}
            (Outcome::Unknown(_), None) => {
                self.rev_of.insert(w, s.rev);
            }
            (outcome, None) => self.violation(
                Kind::FailedWriteSeen,
                involved(w),
                format!(
                    "seen at revision {}, but the write answered {outcome:?}",
                    s.rev
                ),
            ),
        }
    }

    /// The delete of unknown outcome, not yet placed, that can have made the tombstone at
    /// `rev` seen by `by`: invoked before the observation, and before any acknowledged write
    /// above `rev` completed (or that write would have come after it). Of those, the latest
    /// invoked: the one nearest the moment `rev` was written.
    fn unknown_delete_at(&self, rev: u64, by: Option<usize>) -> Option<usize> {
        let seen_by = by.map_or(std::time::Duration::MAX, |b| self.events[b].completed);
        let later_acked = self
            .writes()
            .filter(|&w| matches!(self.events[w].outcome, Outcome::Written { rev: r } if r > rev))
            .map(|w| self.events[w].completed)
            .min()
            .unwrap_or(std::time::Duration::MAX);
        self.writes()
            .filter(|&w| {
                matches!(self.events[w].call, Call::Delete { .. })
                    && self.is_unknown(w)
                    && !self.rev_of.contains_key(&w)
                    && self.events[w].invoked < seen_by
                    && self.events[w].invoked < later_acked
            })
            .max_by_key(|&w| self.events[w].invoked)
    }

    /// Step 2.
    fn check_write_order(&mut self, known: &BTreeMap<u64, usize>) {
        let placed: Vec<(u64, usize)> = known.iter().map(|(&r, &w)| (r, w)).collect();
        for &(ra, a) in &placed {
            for &(rb, b) in &placed {
                if self.effective_by(a) < self.events[b].invoked && ra >= rb {
                    self.violation(
                        Kind::WriteOrder,
                        vec![a, b],
                        format!(
                            "a write at revision {ra} completed before a write at revision {rb} began"
                        ),
                    );
                }
            }
        }
    }

    /// The window of revisions a state seen by event `i` may have: at least every write that
    /// completed before it began, below every write that began after it completed.
    fn window(&self, i: usize, known: &BTreeMap<u64, usize>) -> (u64, Option<usize>, u64) {
        let e = &self.events[i];
        let mut lo = (0, None);
        let mut hi = u64::MAX;
        for (&r, &w) in known {
            if self.effective_by(w) < e.invoked && r >= lo.0 {
                lo = (r, Some(w));
            }
            if self.events[w].invoked > e.completed && r < hi {
                hi = r;
            }
        }
        (lo.0, lo.1, hi)
    }

    fn state_of(&self, i: usize) -> Option<(State, bool)> {
        let e = &self.events[i];
        Some(match (&e.call, &e.outcome) {
            (Call::Get { linearizable, .. }, Outcome::Read(Some(s))) => {
                (State::At(s.rev), *linearizable)
            }
            (Call::Get { linearizable, .. }, Outcome::Read(None)) => {
                (State::Nothing, *linearizable)
            }
            (_, Outcome::Conflict { current: Some(c) }) => (State::At(*c), true),
            (_, Outcome::Conflict { current: None }) => (State::Nothing, true),
            (Call::Delete { .. }, Outcome::NotFound) => (State::Nothing, true),
            _ => return None,
        })
    }

    /// Step 3.
    fn check_reads(&mut self, known: &BTreeMap<u64, usize>) {
        let mut reads: Vec<(usize, u64)> = Vec::new();
        for &i in self.ids {
            let Some((state, linearizable)) = self.state_of(i) else {
                continue;
            };
            let (lo, lo_write, hi) = self.window(i, known);
            let e = &self.events[i];
            match state {
                State::At(r) => {
                    if !known.contains_key(&r) && !self.unplaced_could(e.completed, false) {
                        self.violation(
                            Kind::UnknownWrite,
                            vec![i],
                            format!("revision {r} is no write of the key"),
                        );
                    }
                    if linearizable && r < lo {
                        self.violation(
                            Kind::StaleRead,
                            lo_write.into_iter().chain([i]).collect(),
                            format!("saw revision {r}, older than revision {lo} acknowledged before it began"),
                        );
                    }
                    if r >= hi {
                        self.violation(
                            Kind::FutureRead,
                            vec![i],
                            format!("saw revision {r} of a write invoked after it completed"),
                        );
                    }
                    if linearizable && matches!(e.call, Call::Get { .. }) {
                        reads.push((i, r));
                    }
                }
                State::Nothing => {
                    let delete_in_window = lo.max(1) < hi
                        && known
                            .range(lo.max(1)..hi)
                            .any(|(_, &w)| matches!(self.events[w].call, Call::Delete { .. }));
                    let fine = !linearizable
                        || lo == 0
                        || delete_in_window
                        || self.unplaced_could(e.completed, true);
                    if !fine {
                        self.violation(
                            Kind::StaleRead,
                            lo_write.into_iter().chain([i]).collect(),
                            format!("saw no live record, but revision {lo}, a put acknowledged before it began, has no later delete"),
                        );
                    }
                }
            }
        }
        for &(a, ra) in &reads {
            for &(b, rb) in &reads {
                if self.events[a].completed < self.events[b].invoked && ra > rb {
                    self.violation(
                        Kind::NonMonotonicRead,
                        vec![a, b],
                        format!("a read saw revision {ra}, a later read {rb}"),
                    );
                }
            }
        }
    }

    /// Step 4.
    fn check_expectations(&mut self, known: &BTreeMap<u64, usize>) {
        for w in self.writes().collect::<Vec<_>>() {
            let e = &self.events[w];
            let expect = match &e.call {
                Call::Put { expect, .. } | Call::Delete { expect, .. } => *expect,
                Call::Get { .. } => continue,
            };
            match (expect, &e.outcome) {
                (Expect::Rev(n), Outcome::Written { rev: m }) => {
                    let between: Vec<usize> = if n + 1 < *m {
                        known.range(n + 1..*m).map(|(_, &x)| x).collect()
                    } else {
                        Vec::new()
                    };
                    if let Some(&x) = between.first() {
                        self.violation(
                            Kind::Expectation,
                            vec![x, w],
                            format!("expected revision {n} and took effect at {m}, but another write came between"),
                        );
                    } else if !known.contains_key(&n) && !self.unplaced_could(e.completed, false) {
                        self.violation(
                            Kind::Expectation,
                            vec![w],
                            format!(
                                "expected revision {n}, no write of the key, and took effect at {m}"
                            ),
                        );
                    }
                }
                (Expect::Absent, Outcome::Written { rev: m }) => {
                    if let Some((&r, &p)) = known.range(..*m).next_back()
                        && matches!(self.events[p].call, Call::Put { .. })
                        && !self.unplaced_could(e.completed, true)
                    {
                        self.violation(
                            Kind::Expectation,
                            vec![p, w],
                            format!("expected no live record and took effect at {m}, over the put at {r}"),
                        );
                    }
                }
                (Expect::Rev(n), Outcome::Conflict { current: Some(c) }) if *c == n => {
                    self.violation(
                        Kind::Expectation,
                        vec![w],
                        format!("refused: expected revision {n}, and the record was at {c}"),
                    );
                }
                (Expect::Absent, Outcome::Conflict { current: Some(c) }) => {
                    if let Some(&p) = known.get(c)
                        && matches!(self.events[p].call, Call::Delete { .. })
                    {
                        self.violation(
                            Kind::Expectation,
                            vec![p, w],
                            format!("refused: expected no live record, and the record at {c} was a tombstone"),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Step 5.
    fn check_final(&mut self, fin: Option<&Seen>, known: &BTreeMap<u64, usize>) {
        let Some((&newest, &w)) = known
            .iter()
            .rev()
            .find(|&(_, &w)| matches!(self.events[w].outcome, Outcome::Written { .. }))
        else {
            return;
        };
        match fin {
            Some(s) if s.rev < newest => self.violation(
                Kind::LostWrite,
                vec![w],
                format!(
                    "acknowledged at revision {newest}, but the final record is at {}",
                    s.rev
                ),
            ),
            None if matches!(self.events[w].call, Call::Put { .. })
                && !known
                    .range(newest + 1..)
                    .any(|(_, &x)| matches!(self.events[x].call, Call::Delete { .. }))
                && !self.unplaced_could(std::time::Duration::MAX, true) =>
            {
                self.violation(
                    Kind::LostWrite,
                    vec![w],
                    format!("put acknowledged at revision {newest}, and the key has no record after healing"),
                )
            }
            _ => {}
        }
    }
}

/// Step 6, order: each watcher's revisions strictly increase.
fn check_watch_order(w: &WatchLog, out: &mut Vec<Violation>) {
    for pair in w.events.windows(2) {
        let ((ka, a), (kb, b)) = (&pair[0], &pair[1]);
        if b.rev <= a.rev {
            out.push(Violation {
                kind: Kind::WatchOrder,
                key: kb.clone(),
                message: format!(
                    "node {}'s watcher got {ka:?} at revision {} and then {kb:?} at {}",
                    w.node + 1,
                    a.rev,
                    b.rev
                ),
                events: Vec::new(),
            });
        }
    }
}

/// Step 6, completeness: after healing each watcher ends at every key's final record.
fn check_watch_final(
    watches: &[WatchLog],
    finals: &BTreeMap<String, Option<Seen>>,
    out: &mut Vec<Violation>,
) {
    for w in watches {
        if !w.compacted.is_empty() {
            continue;
        }
        let mut last: BTreeMap<&str, &Seen> = BTreeMap::new();
        for (k, s) in &w.events {
            last.insert(k, s);
        }
        for (key, fin) in finals {
            let Some(fin) = fin else { continue };
            if last.get(key.as_str()).map(|s| s.rev) != Some(fin.rev) {
                out.push(Violation {
                    kind: Kind::WatchMissing,
                    key: key.clone(),
                    message: format!(
                        "node {}'s watcher last saw {:?}, the final record is at revision {}",
                        w.node + 1,
                        last.get(key.as_str()).map(|s| s.rev),
                        fin.rev
                    ),
                    events: Vec::new(),
                });
            }
        }
    }
}
