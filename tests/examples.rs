//! The programs in `examples/` run to the end: each checks its own results and fails on a
//! wrong one. They are compiled in here as modules and their `main` called, as `cargo run
//! --example NAME` would run it.

#[path = "../examples/cluster.rs"]
mod cluster;
#[path = "../examples/embedded.rs"]
mod embedded;
#[path = "../examples/remote_watch.rs"]
mod remote_watch;

#[test]
fn an_embedded_node() {
    embedded::main().unwrap();
}

#[test]
fn a_cluster_in_one_process() {
    cluster::main().unwrap();
}

#[test]
fn a_remote_client_whose_watch_survives_compaction() {
    remote_watch::main().unwrap();
}
