//! A remote `Client` and a watch that survives `Compacted`.
//!
//! ```sh
//! cargo run --example remote_watch
//! ```
//!
//! The node runs in this process for the example's sake; a `Client` is what another process
//! uses, over TLS, with the credentials file the cluster's first node wrote. A watch from an
//! old revision meets `Compacted` once GC has purged the history it needs: the watcher then
//! lists the bucket, and watches on from the revision it listed at.

use std::time::Duration;

use metakv::{Client, ClientCreds, Consistency, Expect, Kv, Node, NodeConfig, WatchEvent};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("node1");
    let node = Node::start(NodeConfig::new(1, &data, "127.0.0.1:0")).await?;

    // Another process would do only this: the CA and the admin's certificate, and an address.
    let creds = ClientCreds::load(&data.join(metakv::tls::ADMIN_CREDS))?;
    let client = Client::new(vec![node.addr().to_owned()], "metakv", &creds)?;

    client.create_bucket_if_absent("config").await?;
    for key in ["a", "b", "c"] {
        client
            .put("config", key.as_bytes(), b"1", Expect::Any)
            .await?;
    }
    client.delete("config", b"b", Expect::Any).await?;
    // GC purges the tombstone of b, and with it the history before it.
    let job = client.gc_run(false, Some(0)).await?;
    let record = client.gc_wait(job, Duration::from_millis(50)).await?;
    let noun = if record.purged == 1 {
        "tombstone"
    } else {
        "tombstones"
    };
    println!("GC job {job} purged {} {noun}", record.purged);

    // A watcher that asks for everything from revision 1.
    let mut from = 1;
    let mut seen = 0;
    let mut relisted = false;
    'watching: loop {
        let mut watch = client.watch("config", b"", from);
        loop {
            match watch.next().await? {
                WatchEvent::Change { key, record } => {
                    let what = if record.deleted { "deleted" } else { "put" };
                    println!(
                        "{} {what} at revision {}",
                        String::from_utf8_lossy(&key),
                        record.rev
                    );
                    seen += 1;
                    if key == b"d" {
                        break 'watching;
                    }
                }
                WatchEvent::Compacted { floor } => {
                    // The changes we asked for are gone (purged up to `floor`). The state is
                    // not: note the revision, list the bucket, and watch on after it.
                    let at = client.status().await?.applied;
                    let listed = list_all(&client, "config").await?;
                    println!(
                        "history purged up to {floor}: listed {} keys at {at}",
                        listed.len()
                    );
                    assert_eq!(listed, [b"a".to_vec(), b"c".to_vec()], "b was deleted");
                    relisted = true;
                    from = at + 1;
                    // Something changes after the listing: the watch from `at + 1` sees it.
                    client.put("config", b"d", b"1", Expect::Any).await?;
                    continue 'watching;
                }
            }
        }
    }
    assert!(relisted, "the watch from revision 1 met the purge");
    assert_eq!(seen, 1, "only d changed after the listing");
    println!("{seen} change seen after the listing");
    node.shutdown().await;
    Ok(())
}

/// Every live key of `bucket`, a page at a time.
async fn list_all(client: &Client, bucket: &str) -> Result<Vec<Vec<u8>>, metakv::Error> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .scan(bucket, b"", after, 1000, false, Consistency::Linearizable)
            .await?;
        keys.extend(page.items.into_iter().map(|(k, _)| k));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(keys),
        }
    }
}
