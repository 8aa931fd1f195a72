//! `metakv-raft`: replication of the store through openraft — the log store on redb
//! (`raft-log.redb`), the state machine over `metakv-store`, and the TCP transport.
//!
//! This crate depends on `metakv-store` only; it knows nothing of GC or hibernation.
#![forbid(unsafe_code)]
