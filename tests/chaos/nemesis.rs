//! The nemesis: a schedule of faults drawn from the seed before the run begins, so the same
//! seed replays the same faults at the same times. A fault names a role (the leader, a
//! follower), not a node: which node that is depends on the run.
//!
//! One fault at a time, each healed before the next: a 3-node cluster survives any one.
//! (A membership change passes through 2 and 4 members; a partition leaves a majority.)

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
    /// Cut links between nodes (see [`Cut`]) for `held`, then heal.
    Partition {
        cut: Cut,
        held: Duration,
    },
    /// Every byte between nodes waits `delay` (in order), for `held`.
    Delay {
        delay: Duration,
        held: Duration,
    },
    /// A fourth node joins, serves for `held`, and is removed again.
    AddRemove {
        held: Duration,
    },
    /// Two new nodes join at the same instant (each join under way while the other's is),
    /// serve for `held`, and are removed at the same instant.
    JoinTogether {
        held: Duration,
    },
    /// A follower is killed, its data dir wiped, its id removed, and a new node (a new id,
    /// the same addresses) joins in its place.
    Replace,
    /// The cold bucket is paused to an archive and resumed, and the leader is killed
    /// `kill_after` into each operation, restarted after `down`.
    Hibernate {
        kill_after: Duration,
        down: Duration,
    },
    /// The disk of one node ([`crate::cluster::DISK_SLOT`]) full for `held`; the node is
    /// restarted once space is back if it stopped.
    FullDisk {
        held: Duration,
    },
}

/// Which links a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The leader from every other node, both ways: a leader in a minority of one.
    IsolateLeader,
    /// A follower from every other node, both ways.
    IsolateFollower,
    /// The leader's sends only: it hears the others but they do not hear it.
    LeaderMute,
    /// The leader's receives only: the others hear it but it does not hear them.
    LeaderDeaf,
    /// The leader and one follower, both ways; the third node still reaches both.
    Bridge,
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
            Fault::Partition { cut, .. } => match cut {
                Cut::IsolateLeader => "partition-isolate-leader",
                Cut::IsolateFollower => "partition-isolate-follower",
                Cut::LeaderMute => "partition-leader-mute",
                Cut::LeaderDeaf => "partition-leader-deaf",
                Cut::Bridge => "partition-bridge",
            },
            Fault::Delay { .. } => "delay",
            Fault::AddRemove { .. } => "member-add-remove",
            Fault::JoinTogether { .. } => "member-join-together",
            Fault::Replace => "member-replace-wiped",
            Fault::Hibernate { .. } => "pause-resume-leader-killed",
            Fault::FullDisk { .. } => "full-disk",
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
        let fault = match rng.below(20) {
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
            8 => Fault::Backup { nth: rng.below(3) },
            9..14 => Fault::Partition {
                cut: [
                    Cut::IsolateLeader,
                    Cut::IsolateFollower,
                    Cut::LeaderMute,
                    Cut::LeaderDeaf,
                    Cut::Bridge,
                ][rng.below(5)],
                held: ms(&mut rng, 500, 4_000),
            },
            14 => Fault::Delay {
                delay: ms(&mut rng, 10, 200),
                held: ms(&mut rng, 1_000, 4_000),
            },
            15 => Fault::AddRemove {
                held: ms(&mut rng, 200, 2_000),
            },
            16 => Fault::Replace,
            17 => Fault::Hibernate {
                kill_after: ms(&mut rng, 0, 300),
                down: ms(&mut rng, 50, 1_500),
            },
            18 => Fault::JoinTogether {
                held: ms(&mut rng, 200, 2_000),
            },
            _ => Fault::FullDisk {
                held: ms(&mut rng, 500, 3_000),
            },
        };
        out.push((at, fault));
        at += ms(&mut rng, 1_000, 3_000);
    }
    out
}
