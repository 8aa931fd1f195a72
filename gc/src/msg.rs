//! What the manager and the agents say to each other over the transport's `gc` service.

use metakv_store::TombstoneRef;
use serde::{Deserialize, Serialize};

use crate::JobId;

/// A call from the manager to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Which GC protocol the node speaks (the version gate).
    Probe,
    /// Prepare and collect in one round trip: take a lease on `job` for `lease_ms`, fix the
    /// node's applied index as the collection's upper bound, and answer the first page of
    /// tombstones deleted at or before `deleted_at_or_before_ms` (the leader's clock).
    Collect {
        job: JobId,
        lease_ms: u64,
        deleted_at_or_before_ms: u64,
        page_size: u32,
    },
    /// The next page of the same collection; renews the lease.
    Next { job: JobId },
    /// Compact the node's state file under the job's lease (taken anew if it lapsed).
    Compact { job: JobId, lease_ms: u64 },
    /// Drop the job's lease. Answered `Released` even when no lease is held.
    Release { job: JobId },
}

impl AgentRequest {
    /// The job the request belongs to; `None` for a probe.
    pub fn job(&self) -> Option<JobId> {
        match self {
            AgentRequest::Probe => None,
            AgentRequest::Collect { job, .. }
            | AgentRequest::Next { job }
            | AgentRequest::Compact { job, .. }
            | AgentRequest::Release { job } => Some(*job),
        }
    }
}

/// An agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentReply {
    Probe {
        protocol: u32,
    },
    /// Sorted by `(bucket, key)`; `more` is false at the end of the collection.
    Page {
        items: Vec<TombstoneRef>,
        more: bool,
    },
    Compacted {
        bytes_before: u64,
        bytes_after: u64,
    },
    Released,
    /// The agent cannot do what was asked: busy with another job, no lease (it expired or the
    /// agent restarted), or a storage error.
    Refused {
        reason: String,
    },
}

/// Why a member's answer to the GC protocol probe is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The call failed (unreachable, timed out, refused).
    #[error("no answer: {0}")]
    Unanswered(String),
    /// The member answered something other than a probe's reply.
    #[error("answered {0}")]
    Unexpected(String),
    /// The member was not asked (it joined after the probes went out).
    #[error("not probed")]
    NotProbed,
}
