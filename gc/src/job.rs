//! Jobs: their ids, settings and the record each one leaves in `_sys`.

use std::fmt;

use metakv_store::TombstoneRef;
use serde::{Deserialize, Serialize};

/// A job's id: the leader's term and a sequence within it. Unique across leaders (a term has
/// one leader) and ordered by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    pub term: u64,
    pub seq: u64,
}

impl JobId {
    /// The key of this job's record in `_sys`: [`crate::JOB_KEY_PREFIX`] then both parts
    /// inverted in fixed-width hex, so a scan of the prefix lists the newest job first.
    pub fn key(self) -> Vec<u8> {
        let mut key = crate::JOB_KEY_PREFIX.to_vec();
        key.extend_from_slice(format!("{:016x}{:016x}", !self.term, !self.seq).as_bytes());
        key
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.seq)
    }
}

/// GC settings; [`GcConfig::default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcConfig {
    /// A job starts this long after the last one (or after the node became leader); 0 turns
    /// the timer off.
    pub interval_ms: u64,
    /// A job starts when the leader holds more tombstones than this; 0 turns it off.
    pub tombstone_threshold: u64,
    /// Tombstones younger than this are not collected, so watchers and compare-and-set see
    /// deletes for at least this long.
    pub min_age_ms: u64,
    /// How long an agent holds a job without hearing from the manager.
    pub lease_ms: u64,
    /// Tombstones per page of a node's collection.
    pub page_size: u32,
    /// Agreed tombstones per `Purge` entry. Each entry is applied in one transaction on every
    /// node, ahead of whatever client write comes after it in the log: small batches keep
    /// writers' latency close to normal while a job runs.
    pub purge_batch: u32,
    /// `Purge` entries proposed and not yet committed at any time: more than one keeps the
    /// log busy while the last one is applied (a higher purge rate, slower client writes).
    pub purges_in_flight: u32,
    /// An agent call or a proposal that takes longer fails the job.
    pub call_timeout_ms: u64,
    /// A node's compaction that takes longer fails the job (the compaction itself finishes).
    pub compact_timeout_ms: u64,
    /// A watcher's long poll pins the tombstones above its cursor on its node for the poll's
    /// wait plus this long, so that one that polls again promptly stays pinned.
    pub pin_grace_ms: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_ms: 3_600_000,
            tombstone_threshold: 1_000_000,
            min_age_ms: 600_000,
            lease_ms: 30_000,
            page_size: 2_000,
            purge_batch: 32,
            purges_in_flight: 1,
            call_timeout_ms: 20_000,
            compact_timeout_ms: 600_000,
            pin_grace_ms: 10_000,
        }
    }
}

/// Why a job started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    Timer,
    Threshold { tombstones: u64 },
    Demand,
}

/// Where a job ended, or that it has not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Running,
    /// Every follower is compacted and the leader hands leadership over; the next leader
    /// compacts this node and finishes the record.
    Handoff {
        compact: u64,
    },
    Succeeded,
    Failed {
        reason: String,
    },
}

impl Outcome {
    pub fn is_finished(&self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Failed { .. })
    }
}

/// How long one phase took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub ms: u64,
}

/// File bytes of one node's `state.redb` around its compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCompaction {
    pub node: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What a job leaves in `_sys` under [`JobId::key`]: written when it starts, before a
/// handoff and when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    /// The node that ran the job (the leader of `id.term`).
    pub leader: u64,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub min_age_ms: u64,
    pub members: Vec<u64>,
    /// Wall-clock times on the leader, in ms since the Unix epoch.
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub phases: Vec<PhaseTime>,
    /// Collectable tombstones each node offered (up to where the intersection ended).
    pub collected: Vec<(u64, u64)>,
    /// Tombstones every node offered with the same revision.
    pub agreed: u64,
    /// Removed by the guarded purge, and left alone because the key changed since collection.
    pub purged: u64,
    pub skipped: u64,
    pub compactions: Vec<NodeCompaction>,
    /// For a dry run: the first agreed tombstones, to show what a real run would purge.
    pub sample: Vec<TombstoneRef>,
    pub outcome: Outcome,
}

impl JobRecord {
    /// A job as it starts on `leader`: nothing collected, purged or compacted yet.
    pub fn started(
        id: JobId,
        leader: u64,
        trigger: Trigger,
        dry_run: bool,
        min_age_ms: u64,
        members: Vec<u64>,
        started_ms: u64,
    ) -> JobRecord {
        JobRecord {
            id,
            leader,
            trigger,
            dry_run,
            min_age_ms,
            members,
            started_ms,
            finished_ms: None,
            phases: Vec::new(),
            collected: Vec::new(),
            agreed: 0,
            purged: 0,
            skipped: 0,
            compactions: Vec::new(),
            sample: Vec::new(),
            outcome: Outcome::Running,
        }
    }

    /// The record as stored in `_sys`: sealed, format [`JOB_RECORD_FORMAT`](crate::JOB_RECORD_FORMAT).
    pub fn encode(&self) -> Vec<u8> {
        crate::format::seal(crate::JOB_RECORD_FORMAT, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<JobRecord, crate::FormatError> {
        crate::format::unseal("GC job record", crate::JOB_RECORD_FORMAT, bytes)
    }

    /// File bytes every compaction of this job gave back.
    pub fn bytes_reclaimed(&self) -> u64 {
        self.compactions
            .iter()
            .map(|c| c.bytes_before.saturating_sub(c.bytes_after))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_record_is_sealed_and_a_damaged_one_refused() {
        let mut record = JobRecord::started(
            JobId { term: 7, seq: 2 },
            1,
            Trigger::Threshold { tombstones: 900 },
            false,
            600_000,
            vec![1, 2, 3],
            1_700_000_000_000,
        );
        record.agreed = 41;
        record.outcome = Outcome::Failed {
            reason: "node 3: no answer".into(),
        };
        let sealed = record.encode();
        assert_eq!(sealed[0], crate::JOB_RECORD_FORMAT);
        assert_eq!(JobRecord::decode(&sealed).unwrap(), record);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(JobRecord::decode(&bad).is_err(), "bit flip at {i}");
        }
        for n in 0..sealed.len() {
            assert!(JobRecord::decode(&sealed[..n]).is_err(), "cut at {n}");
        }
        // The body alone, as job records were once stored (bare postcard), is refused by name.
        let e = JobRecord::decode(&sealed[1..sealed.len() - 4]).unwrap_err();
        assert!(
            e.to_string().starts_with("GC job record is unreadable"),
            "{e}"
        );
    }
}
