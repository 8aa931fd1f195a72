//! When this node builds a Raft snapshot.
//!
//! Every node builds one each `period` applied entries (`NodeConfig::snapshot_logs_since_last`),
//! as openraft's `LogsSinceLast` would, but at its own phase: the k-th of n members (in id
//! order) builds when its applied index passes `k * period / n` modulo `period`. With
//! openraft's policy every node reaches the threshold at about the same entry and all of them
//! export the whole store at once; staggered, at most one member builds at a time, so a quorum
//! is always free of the work and keeps committing at its usual pace.

use std::sync::Weak;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use crate::node_core::{Core, next_tick};

const TICK: Duration = Duration::from_millis(100);

/// The first index above `last` at which the member in `slot` of `members` builds.
pub(crate) fn next_build(last: u64, period: u64, slot: u64, members: u64) -> u64 {
    let phase = period * slot / members.max(1);
    if last < phase {
        return phase;
    }
    phase + ((last - phase) / period + 1) * period
}

/// Triggers this node's snapshots until `stop`.
pub(crate) async fn drive(core: Weak<Core>, period: u64, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The index a build was asked for, until a snapshot at or above it shows up.
    let mut asked: Option<u64> = None;
    while let Some(node) = next_tick(&core, &mut tick, &mut stop).await {
        let m = node.raft.metrics().borrow_watched().clone();
        let last = m.snapshot.map_or(0, |l| l.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        if asked.is_some_and(|a| last >= a) {
            asked = None;
        }
        let membership = m.membership_config.membership();
        let members: Vec<u64> = membership.nodes().map(|(id, _)| *id).collect();
        let slot = members.iter().position(|id| *id == node.id).unwrap_or(0) as u64;
        let next = next_build(last, period, slot, members.len() as u64);
        if applied >= next && asked.is_none() {
            asked = Some(next);
            if node.raft.trigger().snapshot().await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_build;

    #[test]
    fn members_build_at_staggered_phases_once_per_period() {
        // Three members, a period of 300: phases 0, 100, 200.
        assert_eq!(next_build(0, 300, 0, 3), 300);
        assert_eq!(next_build(0, 300, 1, 3), 100);
        assert_eq!(next_build(0, 300, 2, 3), 200);
        assert_eq!(next_build(100, 300, 1, 3), 400);
        assert_eq!(next_build(250, 300, 2, 3), 500);
        assert_eq!(next_build(299, 300, 0, 3), 300);
        // Every member builds once per period, and no two at the same index.
        for last in [0, 1, 99, 100, 101, 12_345] {
            let nexts: Vec<u64> = (0..3).map(|s| next_build(last, 300, s, 3)).collect();
            for &n in &nexts {
                assert!(n > last && n - last <= 300, "{last} -> {n}");
            }
            let mut sorted = nexts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
        }
        // One member: every period, like openraft's own policy.
        assert_eq!(next_build(0, 50, 0, 1), 50);
        assert_eq!(next_build(50, 50, 0, 1), 100);
    }
}
