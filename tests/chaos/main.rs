//! metakv's fault-injection suite: real `metakv serve` processes driven through the public
//! `Client` by concurrent clients and one watcher per node, under a seeded nemesis (kill -9
//! and SIGSTOP of leaders and followers, GC jobs, live compactions, backups), with every
//! key's history checked for linearizability and every node's copy compared after healing.
//! See `docs/reliability.md`.

#[path = "../common/mod.rs"]
mod common;

mod checker;
#[cfg(test)]
mod checker_tests;
mod history;
