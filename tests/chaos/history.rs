//! What the clients did and saw: one [`Event`] per operation, with its invocation and
//! completion times, and what the watchers saw.

use std::time::Duration;

use metakv::Expect;

/// One operation a client invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `value` is unique in the run: it names the write.
    Put {
        key: String,
        value: String,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
    /// A read that includes tombstones, so that every record read carries its revision;
    /// `scan`: this key's part of a scan of the whole bucket.
    Get {
        key: String,
        linearizable: bool,
        scan: bool,
    },
}

impl Call {
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. } | Call::Delete { key, .. } | Call::Get { key, .. } => key,
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Call::Get { .. })
    }
}

/// A record as read: the value (empty for a tombstone), its revision, and whether it is a
/// tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub value: String,
    pub rev: u64,
    pub deleted: bool,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put or delete took effect at this revision.
    Written { rev: u64 },
    /// The expectation did not hold; the key's record was at `current` (none: no record).
    Conflict { current: Option<u64> },
    /// A delete found no live record.
    NotFound,
    /// A read answered: the record, or none (never written, or its tombstone purged).
    Read(Option<Seen>),
    /// Certainly did not take effect (refused before or at apply).
    Failed(String),
    /// May or may not have taken effect (a timeout, a lost connection after sending).
    Unknown(String),
}

/// One operation of one client, with the times (since the run began) it was invoked and
/// answered, and the node it was sent to first.
#[derive(Debug, Clone)]
pub struct Event {
    pub client: usize,
    pub node: usize,
    pub call: Call,
    pub outcome: Outcome,
    pub invoked: Duration,
    pub completed: Duration,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>8.3}s..{:>8.3}s] client {} via node {}: {:?} -> {:?}",
            self.invoked.as_secs_f64(),
            self.completed.as_secs_f64(),
            self.client,
            self.node + 1,
            self.call,
            self.outcome
        )
    }
}

/// What one node's watcher saw, in order.
#[derive(Debug, Clone, Default)]
pub struct WatchLog {
    pub node: usize,
    /// (key, record) in the order delivered.
    pub events: Vec<(String, Seen)>,
    /// `Compacted { floor }` answers, with the position in `events` where each came.
    pub compacted: Vec<(usize, u64)>,
}
