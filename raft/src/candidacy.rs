//! Standing for election soon after the leader's lease runs out.
//!
//! openraft's follower stands only when the leader lease (`election_timeout_max` since the
//! leader was last heard) *and then* a timeout drawn from `[election_timeout_min,
//! election_timeout_max]` have both passed: 1.5-2 s with the defaults, during which no write
//! commits. The lease is what protects a live leader (openraft refuses a pre-vote locally and
//! every voter refuses one while its lease holds); the drawn timeout after it only keeps two
//! followers from standing at the same moment.
//!
//! [`stand_promptly`] keeps the lease and shortens the spread: once this follower has heard
//! nothing from a leader for the lease plus a delay drawn from `[0, spread]`, it asks openraft
//! for a pre-vote round ([`Trigger::elect`] with `pre_vote`). A round that fails (another
//! member still holds its lease, or has a longer log) changes nothing and is tried again
//! after a heartbeat and a fresh draw; openraft's own timer stays as the fallback. Nothing
//! here can raise a term: only a quorum that would grant the vote lets the election go on.
//!
//! [`Trigger::elect`]: openraft::raft::trigger::Trigger::elect

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::types::Raft;

/// When this node last heard from a leader that its vote accepted: touched by the listener
/// after every AppendEntries (heartbeats included) that was not refused for a higher vote.
#[derive(Debug)]
pub struct LeaderContact {
    since: Instant,
    /// Milliseconds from `since` to the last contact.
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    /// Records a contact now. Called after openraft has handled the request, so the lease
    /// openraft renewed is never later than the one recorded here.
    pub fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The last contact (the start, before any).
    pub fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// When a follower stands: the lease, a spread, and how long to wait between rounds.
#[derive(Debug, Clone, Copy)]
pub struct Candidacy {
    /// openraft's leader lease: `election_timeout_max`.
    pub lease: Duration,
    /// The most a follower waits after the lease: a uniform draw from `[0, spread]` per round.
    pub spread: Duration,
    /// The least time between two rounds of this node: the heartbeat interval.
    pub retry: Duration,
}

impl Candidacy {
    /// From openraft's timings: the spread is half the lower election timeout (0-250 ms with
    /// the defaults), far wider than a vote's round trip on one network, so two followers
    /// rarely stand at once; and when they do, openraft's timers settle it.
    pub fn from_timings(heartbeat_ms: u64, election_min_ms: u64, election_max_ms: u64) -> Self {
        Self {
            lease: Duration::from_millis(election_max_ms),
            spread: Duration::from_millis(election_min_ms / 2),
            retry: Duration::from_millis(heartbeat_ms),
        }
    }

    fn draw(&self) -> Duration {
        let spread = u64::try_from(self.spread.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=spread))
    }
}

/// Runs until `shutdown` turns true (or Raft stops): stands for election, with a pre-vote,
/// once this follower has heard no leader for the lease plus a drawn spread.
pub async fn stand_promptly(
    raft: Raft,
    contact: std::sync::Arc<LeaderContact>,
    timing: Candidacy,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut earliest = Instant::now();
    // The contact the last round was asked after: one info line per silence, not per round.
    let mut reported = None;
    loop {
        let due = (contact.last() + timing.lease + timing.draw()).max(earliest);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if contact.last() + timing.lease > Instant::now() {
            continue; // a leader was heard meanwhile
        }
        let follower = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            // A follower that had a leader: a candidate's own timers run its election, and a
            // vote not yet committed belongs to a candidate that may still win.
            m.state == ServerState::Follower && m.vote.committed
        };
        if follower {
            let last = contact.last();
            let silent_ms = last.elapsed().as_millis() as u64;
            if reported == Some(last) {
                tracing::debug!(silent_ms, "still no leader; asking for a pre-vote again");
            } else {
                tracing::info!(
                    silent_ms,
                    "no leader heard for its lease; asking for a pre-vote"
                );
                reported = Some(last);
            }
            if raft.trigger().elect(true).await.is_err() {
                return; // Raft stopped
            }
        }
        earliest = Instant::now() + timing.retry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_half_the_lower_election_timeout() {
        let c = Candidacy::from_timings(100, 500, 1000);
        assert_eq!(c.lease, Duration::from_millis(1000));
        assert_eq!(c.spread, Duration::from_millis(250));
        assert_eq!(c.retry, Duration::from_millis(100));
        for _ in 0..1000 {
            assert!(c.draw() <= c.spread);
        }
    }

    #[tokio::test]
    async fn a_contact_moves_the_last_time_forward_only() {
        let contact = LeaderContact::default();
        let start = contact.last();
        tokio::time::sleep(Duration::from_millis(20)).await;
        contact.touch();
        let touched = contact.last();
        assert!(
            touched >= start + Duration::from_millis(20),
            "{touched:?} vs {start:?}"
        );
        // A touch that loses a race to a later one leaves the later one.
        let later = 60_000;
        contact.last_ms.store(later, Ordering::Relaxed);
        contact.touch();
        assert_eq!(contact.last(), start + Duration::from_millis(later));
    }
}
