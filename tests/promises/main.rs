//! Regression tests for promises that black-box fault tests of the release binary broke: each
//! module guards one, and opens with a paragraph on the bug.

#[path = "../common/mod.rs"]
mod common;

mod a_full_disk_stops_the_node_once;
mod apply_reads_no_node_setting;
mod bad_input_is_refused_before_anything_is_written;
mod check_covers_the_raft_log;
mod linearizable_read_after_quick_leader_restart;
mod membership_changes_need_a_live_node;
mod nodes_started_together_form_one_cluster;
mod refused_writes_reach_no_log;
mod thawed_follower_keeps_the_leader;
mod watch_waits_are_bounded;
