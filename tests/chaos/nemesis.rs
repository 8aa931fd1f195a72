//! The nemesis: a schedule of faults drawn from the seed before the run begins, so the same
//! seed replays the same faults at the same times. A fault names a role (the leader, a
//! follower), not a node: which node that is depends on the run.
//!
//! One fault at a time, each healed before the next: a 3-node cluster survives any one.

use std::time::Duration;

use crate::common::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, restarted on its files after `down` (quick: under the election timeout).
    KillLeader {
        down: Duration,
    },
    KillFollower {
        down: Duration,
    },
    /// `SIGSTOP`, `SIGCONT` after `frozen`: a node that wakes with a stale view.
    PauseLeader {
        frozen: Duration,
    },
    PauseFollower {
        frozen: Duration,
    },
    /// A GC job on tombstones of any age, while the clients delete and write.
    Gc,
    /// A live compaction of one node (`nth` of the three).
    Compact {
        nth: usize,
    },
    /// A backup through one node.
    Backup {
        nth: usize,
    },
}

impl Fault {
    /// The kind, for counting: `kill-leader-quick`, `pause-follower`, ...
    pub fn kind(&self) -> &'static str {
        let quick = |d: &Duration| *d < Duration::from_millis(500);
        match self {
            Fault::KillLeader { down } if quick(down) => "kill-leader-quick",
            Fault::KillLeader { .. } => "kill-leader-slow",
            Fault::KillFollower { down } if quick(down) => "kill-follower-quick",
            Fault::KillFollower { .. } => "kill-follower-slow",
            Fault::PauseLeader { .. } => "pause-leader",
            Fault::PauseFollower { .. } => "pause-follower",
            Fault::Gc => "gc",
            Fault::Compact { .. } => "compact",
            Fault::Backup { .. } => "backup",
        }
    }
}

/// Faults from 2 s into the run until 3 s before its end, 1 to 3 s apart.
pub fn schedule(seed: u64, run: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = Rng::new(seed ^ 0x6e65_6d65_7369_7300);
    let mut at = Duration::from_secs(2);
    let mut out = Vec::new();
    let end = run.saturating_sub(Duration::from_secs(3));
    while at < end {
        let ms = |rng: &mut Rng, lo, hi| Duration::from_millis(rng.range(lo, hi));
        let fault = match rng.below(9) {
            0 => Fault::KillLeader {
                down: ms(&mut rng, 50, 400),
            },
            1 => Fault::KillLeader {
                down: ms(&mut rng, 1_200, 2_500),
            },
            2 => Fault::KillFollower {
                down: ms(&mut rng, 50, 400),
            },
            3 => Fault::KillFollower {
                down: ms(&mut rng, 1_200, 2_500),
            },
            4 => Fault::PauseLeader {
                frozen: ms(&mut rng, 300, 2_000),
            },
            5 => Fault::PauseFollower {
                frozen: ms(&mut rng, 300, 2_000),
            },
            6 => Fault::Gc,
            7 => Fault::Compact { nth: rng.below(3) },
            _ => Fault::Backup { nth: rng.below(3) },
        };
        out.push((at, fault));
        at += ms(&mut rng, 1_000, 3_000);
    }
    out
}
