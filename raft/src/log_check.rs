//! `check` of a stopped node's Raft log: the file, every entry, the meta values, and the
//! state file against the log.
//!
//! What holds in a sound data dir, and what this checks:
//! - `raft-log.redb` opens as a redb file (it is never created here) and passes redb's page
//!   checksums.
//! - Every entry unseals (format version, crc32), sits under its own index, and the indexes
//!   are consecutive with terms that never go back. When the log was purged, the first entry
//!   is the one after `last_purged`.
//! - The vote unseals, and its term is at least the last entry's: a node never holds entries
//!   of a term above the vote it saved.
//! - `last_purged <= committed <= last log index`.
//! - The state has applied no entry the log never had (`applied <= last log index`), none the
//!   log has lost without a snapshot (`applied >= last_purged`: a snapshot, after which the
//!   log is purged, begins by syncing the state), and the entry it applied last is the one
//!   the log holds at that index.

use std::io;
use std::path::Path;

use metakv_store::ReadView;
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::log_store::{COMMITTED, LAST_PURGED, LOG, META, VOTE, unseal};
use crate::types::{Entry, LogId, Vote};

/// Problems listed at most; past this, one line says how many more there were.
pub const LOG_PROBLEMS_LISTED_MAX: usize = 100;

/// What checking a Raft log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCheck {
    pub entries: u64,
    pub first: Option<LogId>,
    pub last: Option<LogId>,
    pub last_purged: Option<LogId>,
    pub committed: Option<LogId>,
    pub vote: Option<Vote>,
    /// Every problem found, in the order found; empty for a sound log.
    pub problems: Vec<String>,
}

impl LogCheck {
    fn problem(&mut self, p: String) {
        if self.problems.len() < LOG_PROBLEMS_LISTED_MAX {
            self.problems.push(p);
        } else if self.problems.len() == LOG_PROBLEMS_LISTED_MAX {
            self.problems.push("more problems not listed".to_owned());
        }
    }

    /// The last index the log accounts for: its last entry, or where it was purged to.
    pub fn last_index(&self) -> Option<u64> {
        self.last.or(self.last_purged).map(|l| l.index)
    }
}

/// Checks the log file at `path` of a stopped node and, given the node's state file as
/// `state`, the state against the log. A file that is missing, empty or not a redb file is a
/// problem reported, not an error; an error is a failure to read what exists.
pub fn check_log_file(path: &Path, state: Option<&ReadView>) -> io::Result<LogCheck> {
    let mut check = LogCheck::default();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            check.problem(format!("{} is missing", path.display()));
            return Ok(check);
        }
        Err(e) => return Err(e),
        Ok(m) if m.len() == 0 => {
            check.problem(format!("{} is empty (0 bytes)", path.display()));
            return Ok(check);
        }
        Ok(_) => {}
    }
    let mut db = match Database::open(path) {
        Ok(db) => db,
        Err(e) => {
            check.problem(format!("{} does not open: {e}", path.display()));
            return Ok(check);
        }
    };
    check_log_db(&mut db, state)
}

/// The same checks on an open log database.
pub(crate) fn check_log_db(db: &mut Database, state: Option<&ReadView>) -> io::Result<LogCheck> {
    let mut check = LogCheck::default();
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => check.problem("redb repaired the file's page checksums".to_owned()),
        Err(e) => {
            check.problem(format!("page checksums: {e}"));
            return Ok(check);
        }
    }
    if let Err(e) = check_contents(db, &mut check) {
        check.problem(format!("reading the log: {e}"));
    }
    if let Some(view) = state {
        check_state_against_log(view, db, &mut check)?;
    }
    Ok(check)
}

fn check_contents(db: &Database, check: &mut LogCheck) -> Result<(), redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let value = |key: &str| -> Result<Option<Vec<u8>>, redb::Error> {
        Ok(meta.get(key)?.map(|v| v.value().to_vec()))
    };
    if let Some(b) = value(VOTE)? {
        match unseal::<Vote>(VOTE, &b) {
            Ok(v) => check.vote = Some(v),
            Err(e) => check.problem(format!("the vote: {e}")),
        }
    }
    if let Some(b) = value(LAST_PURGED)? {
        match unseal::<LogId>(LAST_PURGED, &b) {
            Ok(p) => check.last_purged = Some(p),
            Err(e) => check.problem(format!("the purge point: {e}")),
        }
    }
    if let Some(b) = value(COMMITTED)? {
        match unseal::<Option<LogId>>(COMMITTED, &b) {
            Ok(c) => check.committed = c,
            Err(e) => check.problem(format!("the commit point: {e}")),
        }
    }
    let log = txn.open_table(LOG)?;
    let mut prev: Option<LogId> = None;
    for row in log.iter()? {
        let (k, v) = row?;
        let index = k.value();
        check.entries += 1;
        let entry = match unseal::<Entry>("entry", v.value()) {
            Ok(e) => e,
            Err(e) => {
                check.problem(format!("entry {index}: {e}"));
                prev = None;
                continue;
            }
        };
        let id = entry.log_id;
        if id.index != index {
            check.problem(format!(
                "entry {index} holds the entry of index {}",
                id.index
            ));
        }
        if let Some(p) = prev {
            if index != p.index + 1 {
                check.problem(format!("a hole in the log: entry {} then {index}", p.index));
            }
            if id.leader_id.term < p.leader_id.term {
                check.problem(format!(
                    "entry {index} is of term {}, below entry {}'s term {}",
                    id.leader_id.term, p.index, p.leader_id.term
                ));
            }
        }
        if check.first.is_none() {
            check.first = Some(id);
            if let Some(p) = check.last_purged
                && index != p.index + 1
            {
                check.problem(format!(
                    "the log was purged up to {} but begins at {index}",
                    p.index
                ));
            }
        }
        check.last = Some(id);
        prev = Some(id);
    }
    if let (Some(v), Some(l)) = (&check.vote, check.last)
        && v.leader_id.term < l.leader_id.term
    {
        check.problem(format!(
            "the vote is of term {}, below the last entry's term {}",
            v.leader_id.term, l.leader_id.term
        ));
    }
    let purged = check.last_purged.map(|p| p.index);
    let committed = check.committed.map(|c| c.index);
    if purged > committed && purged.is_some() {
        check.problem(format!(
            "purged up to {purged:?}, beyond the commit point {committed:?}"
        ));
    }
    if committed > check.last_index() {
        check.problem(format!(
            "committed up to {committed:?}, beyond the last entry {:?}",
            check.last_index()
        ));
    }
    Ok(())
}

fn check_state_against_log(view: &ReadView, db: &Database, check: &mut LogCheck) -> io::Result<()> {
    let (applied, membership) = match crate::StateMachine::applied(view) {
        Ok(a) => a,
        Err(e) => {
            check.problem(format!("the state's applied log id: {e}"));
            return Ok(());
        }
    };
    let applied_index = applied.map(|a| a.index);
    if applied_index > check.last_index() {
        check.problem(format!(
            "the state has applied up to {applied_index:?}, beyond the log's last entry {:?}",
            check.last_index()
        ));
    }
    if let Some(p) = check.last_purged
        && applied_index < Some(p.index)
    {
        check.problem(format!(
            "the state has applied up to {applied_index:?} but the log was purged up to {}: \
             the entries between are in neither file",
            p.index
        ));
    }
    if let Some(a) = applied {
        let txn = db.begin_read().map_err(io::Error::other)?;
        let log = txn.open_table(LOG).map_err(io::Error::other)?;
        let held = log.get(a.index).map_err(io::Error::other)?;
        if let Some(v) = held
            && let Ok(entry) = unseal::<Entry>("entry", v.value())
            && entry.log_id != a
        {
            check.problem(format!(
                "the state applied {a} but the log's entry {} is {}",
                a.index, entry.log_id
            ));
        }
    }
    if membership.log_id().map(|l| l.index) > applied_index {
        check.problem(format!(
            "the state's membership is of entry {:?}, beyond what it applied ({applied_index:?})",
            membership.log_id().map(|l| l.index)
        ));
    }
    Ok(())
}
