//! openraft's storage conformance suite against the redb log store and the store-backed state
//! machine: every test builds both on fresh files in a temporary directory.

use std::sync::{Arc, RwLock};

use metakv_raft::{LogStore, StateMachine, TypeConfig};
use metakv_store::{Config, Store};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft-log.redb")).unwrap();
        let config = Config {
            durable: false,
            ..Config::new(dir.path().join("state.redb"))
        };
        let store = Arc::new(RwLock::new(Store::open(config).unwrap()));
        let sm = StateMachine::new(store, dir.path().join("snapshots")).unwrap();
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}
