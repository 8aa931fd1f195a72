//! `metakv-gc`: the tombstone GC coordinator and agents, and bucket hibernation, driven over
//! the transport's service channel of `metakv-raft`.
#![forbid(unsafe_code)]
