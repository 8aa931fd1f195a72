//! An embedded single node: the store runs inside this program, its data in a directory.
//!
//! ```sh
//! cargo run --example embedded
//! ```
//!
//! A new data dir makes a cluster of one (and its certificate authority); started again on
//! the same dir, the node has everything it acknowledged.

use metakv::{Applied, Expect, Kv, Node, NodeConfig};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = NodeConfig::new(1, dir.path().join("node1"), "127.0.0.1:0");
    let node = Node::start(config.clone()).await?;
    println!("node 1 serves on {}", node.addr());

    // Safe at every start of the application.
    node.create_bucket_if_absent("users").await?;
    assert!(
        !node.create_bucket_if_absent("users").await?,
        "it exists now"
    );

    // Create only if absent: the answer carries the record's revision.
    let Applied::Written { rev } = node.put("users", b"ada", b"admin", Expect::Absent).await?
    else {
        return Err("ada exists already".into());
    };
    println!("ada written at revision {rev}");

    // Compare-and-set: only if ada is still at `rev`. A second one with the same
    // expectation is refused, with the revision that is there now.
    node.put("users", b"ada", b"owner", Expect::Rev(rev))
        .await?;
    let stale = node
        .put("users", b"ada", b"guest", Expect::Rev(rev))
        .await?;
    assert!(matches!(stale, Applied::Conflict { .. }), "{stale:?}");

    // A delete leaves a tombstone, which watchers and compare-and-set see.
    node.delete("users", b"ada", Expect::Any).await?;
    assert!(node.get("users", b"ada").await?.is_none());
    let tombstone = node
        .get_with("users", b"ada", metakv::Consistency::Linearizable, true)
        .await?
        .expect("the tombstone");
    println!("ada deleted at revision {}", tombstone.rev);

    // Stopped and started again on its files: nothing acknowledged is lost.
    node.put("users", b"bob", b"editor", Expect::Any).await?;
    node.shutdown().await;
    drop(node);
    let node = Node::start(config).await?;
    let bob = node
        .get("users", b"bob")
        .await?
        .expect("bob survives a restart");
    println!(
        "after a restart: bob = {}",
        String::from_utf8_lossy(&bob.value)
    );
    node.shutdown().await;
    Ok(())
}
